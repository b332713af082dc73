package policy

import (
	"strings"

	"github.com/emersion/go-msgauth/authres"

	"github.com/dmarc-milter/dmarc-milter/policy/dkim"
	"github.com/dmarc-milter/dmarc-milter/policy/dmarc"
)

// AuthenticationResults returns the value of our Authentication-Results
// header field (RFC 8601) for v: spf (smtp.mailfrom), spf for the HELO
// identity (smtp.helo), one dkim entry per signature (header.d, header.s,
// header.a, header.b) and dmarc (header.from, policy.dmarc). Entries are
// folded one per line; go-msgauth's authres quotes the values.
func (e *Evaluator) AuthenticationResults(v Verdict, mailFrom, helo string) string {
	var rs []authres.Result

	spfIdentity := mailFrom
	if spfIdentity == "" && helo != "" {
		spfIdentity = "postmaster@" + helo // RFC 7208 section 2.4
	}
	rs = append(rs, &authres.GenericResult{
		Method: "spf",
		Value:  authres.ResultValue(v.SPF.Status),
		Params: map[string]string{"smtp.mailfrom": spfIdentity},
	})
	if helo != "" {
		rs = append(rs, &authres.GenericResult{
			Method: "spf",
			Value:  authres.ResultValue(v.HeloSPF.Status),
			Params: map[string]string{"smtp.helo": helo},
		})
	}

	if len(v.DKIM) == 0 {
		rs = append(rs, &authres.GenericResult{Method: "dkim", Value: authres.ResultNone})
	}
	for _, d := range v.DKIM {
		p := map[string]string{
			"header.d": d.Domain,
			"header.s": d.Selector,
			"header.a": d.Algorithm,
			"header.b": d.BPrefix,
		}
		if d.Status != dkim.Pass && d.Err != nil {
			p["reason"] = d.Err.Error()
		}
		rs = append(rs, &authres.GenericResult{Method: "dkim", Value: authres.ResultValue(d.Status), Params: p})
	}

	dm := map[string]string{"header.from": v.FromDomain}
	if v.FromErr != nil {
		dm["reason"] = fromErrorText(v.FromErr)
	} else if v.DMARC.Err != nil && v.DMARC.Status != dmarc.StatusPass {
		dm["reason"] = v.DMARC.Err.Error()
	}
	if v.DMARC.Record != nil {
		dm["policy.dmarc"] = string(v.DMARC.Applied)
	}
	status := v.DMARC.Status
	if status == "" {
		status = dmarc.StatusNone
	}
	rs = append(rs, &authres.GenericResult{Method: "dmarc", Value: authres.ResultValue(status), Params: dm})

	var b strings.Builder
	b.WriteString(e.cfg.Load().AuthservID)
	for _, r := range rs {
		// Format with an empty identity gives "; method=value params".
		s := strings.TrimSpace(strings.TrimPrefix(authres.Format("", []authres.Result{r}), "; "))
		b.WriteString(";\n\t")
		b.WriteString(s)
	}
	return b.String()
}

// IsOurs reports whether an incoming Authentication-Results value carries
// our authserv-id (RFC 8601 section 5: such fields are forgeries and are
// removed).
func (e *Evaluator) IsOurs(value string) bool {
	return strings.EqualFold(AuthservIDOf(value), e.cfg.Load().AuthservID)
}

// AuthservIDOf extracts the authserv-id of an Authentication-Results field
// value: the first token, after comments and white space, up to ";" or
// white space. It is lenient on purpose (a forgery need not be well formed).
func AuthservIDOf(value string) string {
	s := StripComments(value)
	s = strings.TrimSpace(s)
	if i := strings.IndexAny(s, "; \t\r\n"); i >= 0 {
		s = s[:i]
	}
	return strings.Trim(s, `"`)
}

// StripComments removes RFC 5322 comments (nested parentheses, with
// quoted-pairs) from a header field value.
func StripComments(s string) string {
	var b strings.Builder
	depth := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && depth > 0:
			i++
		case c == '(':
			depth++
		case c == ')' && depth > 0:
			depth--
		case depth == 0:
			b.WriteByte(c)
		}
	}
	return b.String()
}
