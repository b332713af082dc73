// Package aggregate makes DMARC aggregate reports (RFC 9990): it records
// one row of facts for every judged message into the store (Recorder),
// and after each period builds one report per policy domain from the rows
// of every host and puts one message per authorized rua destination in
// the outbox (package report/outbox), whose sender asks the claim check
// before delivering (Sender). The XML follows RFC 9990's schema
// (urn:ietf:params:xml:ns:dmarc-2.0); the message is a gzip attachment
// named and titled as RFC 9990 Section 4.5 says.
//
// Which messages are counted: those DMARC evaluated to pass or fail under
// a DMARC Policy Record with at least one "mailto:" rua URI (RFC 9990
// reports the results of applying a published policy; there is no
// RFC 9990 result for the others). Not counted: mail without a usable From
// (RFC 9989 Section 4.10.1 gives no policy to apply), records that are
// malformed (permerror), outcomes a DNS failure left unknown (the sender
// tries again, and is counted then), and our own reports.
package aggregate

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"
	"time"

	"github.com/dmarc-milter/dmarc-milter/policy"
	"github.com/dmarc-milter/dmarc-milter/policy/dkim"
	"github.com/dmarc-milter/dmarc-milter/policy/dmarc"
	"github.com/dmarc-milter/dmarc-milter/policy/spf"
	"github.com/dmarc-milter/dmarc-milter/report/store"
)

// Row is what one message adds to its policy domain's report: an RFC 9990
// record without its count. Messages with equal rows are counted together.
type Row struct {
	SourceIP     string `json:"ip"`
	HeaderFrom   string `json:"hf"`
	EnvelopeFrom string `json:"ef,omitempty"`
	EnvelopeTo   string `json:"et,omitempty"`
	// Disposition is the policy applied (RFC 9990 ActionDispositionType):
	// none, pass (passed under an enforcing policy), quarantine or reject.
	Disposition string `json:"d"`
	// DKIM and SPF are the DMARC-aligned results: pass or fail.
	DKIM    string   `json:"dk"`
	SPF     string   `json:"sp"`
	Reasons []Reason `json:"r,omitempty"`
	// AuthSPF and AuthDKIM are the authentication results, uninterpreted.
	AuthSPF  *AuthSPF   `json:"as,omitempty"`
	AuthDKIM []AuthDKIM `json:"ad,omitempty"`
}

// Reason is a policy override (RFC 9990 PolicyOverrideReason).
type Reason struct {
	Type    string `json:"t"`
	Comment string `json:"c,omitempty"`
}

// AuthSPF is the SPF result (RFC 9990 SPFAuthResultType).
type AuthSPF struct {
	Domain string `json:"d"`
	Scope  string `json:"s,omitempty"` // "mfrom"; empty for the HELO identity
	Result string `json:"r"`
}

// AuthDKIM is one DKIM result (RFC 9990 DKIMAuthResultType).
type AuthDKIM struct {
	Domain   string `json:"d"`
	Selector string `json:"s"`
	Result   string `json:"r"`
}

// Published is the policy published (RFC 9990 PolicyPublishedType), with
// the rua URIs the report goes to.
type Published struct {
	Domain    string `json:"domain"`
	P         string `json:"p"`
	SP        string `json:"sp,omitempty"`
	NP        string `json:"np,omitempty"`
	ADKIM     string `json:"adkim"`
	ASPF      string `json:"aspf"`
	FO        string `json:"fo"`
	Testing   string `json:"testing"`
	Discovery string `json:"discovery"`
	RUA       []URI  `json:"rua"`
}

// URI is a rua URI as published, with its legacy "!size" limit: what the
// report's destinations are made of (report.Destinations). The store
// holds {"uri":..., "max_size":...}; policies stored by earlier versions
// hold the URI alone, as a string, and still read.
type URI struct {
	Address string `json:"uri"`
	MaxSize uint64 `json:"max_size,omitempty"`
}

// UnmarshalJSON implements json.Unmarshaler.
func (u *URI) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		*u = URI{}
		return json.Unmarshal(b, &u.Address)
	}
	type plain URI // without this method
	return json.Unmarshal(b, (*plain)(u))
}

// uris returns the rua URIs as dmarc.URIs.
func (p *Published) uris() []dmarc.URI {
	out := make([]dmarc.URI, len(p.RUA))
	for i, u := range p.RUA {
		out[i] = dmarc.URI{Address: u.Address, MaxSize: u.MaxSize}
	}
	return out
}

// Period returns the start of the period t falls in: periods are interval
// long, aligned on the Unix epoch, so a day starts at 00:00 UTC and never
// overlaps the next.
func Period(t time.Time, interval time.Duration) int64 {
	sec := int64(interval / time.Second)
	if sec < 1 {
		sec = 1
	}
	u := t.Unix()
	return u - ((u%sec)+sec)%sec
}

// Facts are the options of a row that are not in the message.
type Facts struct {
	// EnvelopeTo: record the envelope recipient domain.
	EnvelopeTo bool
	// OwnAddress is our report address: its messages are not counted.
	OwnAddress string
}

// RowOf returns the row and the policy of a judged message, and false if
// the message is not counted (see the package documentation).
func RowOf(j *policy.Judged, f Facts) (Row, Published, bool) {
	v := &j.Verdict
	rec := v.DMARC.Record
	if rec == nil || v.FromErr != nil || v.Unknown() || v.DMARC.PolicyDomain == "" ||
		(v.DMARC.Status != dmarc.Pass && v.DMARC.Status != dmarc.Fail) {
		return Row{}, Published{}, false
	}
	if f.OwnAddress != "" && strings.EqualFold(j.MailFrom, f.OwnAddress) {
		return Row{}, Published{}, false
	}
	pub := Published{
		Domain:    v.DMARC.PolicyDomain,
		P:         string(rec.Policy),
		SP:        string(rec.SubdomainPolicy),
		NP:        string(rec.NonexistentPolicy),
		ADKIM:     string(rec.ADKIM),
		ASPF:      string(rec.ASPF),
		FO:        rec.FailureOptions.String(),
		Testing:   "n",
		Discovery: "treewalk",
	}
	if rec.Testing {
		pub.Testing = "y"
	}
	for _, u := range rec.RUA {
		if strings.HasPrefix(strings.ToLower(u.Address), "mailto:") {
			pub.RUA = append(pub.RUA, URI{Address: u.Address, MaxSize: u.MaxSize})
		}
	}
	if len(pub.RUA) == 0 {
		return Row{}, Published{}, false // no report is wanted
	}

	r := Row{
		SourceIP:   j.ClientAddr(),
		HeaderFrom: v.FromDomain(),
		DKIM:       passFail(v.DMARC.DKIMAligned),
		SPF:        passFail(v.DMARC.SPFAligned),
	}
	if at := strings.LastIndexByte(j.MailFrom, '@'); at >= 0 {
		r.EnvelopeFrom = strings.ToLower(j.MailFrom[at+1:])
	}
	if f.EnvelopeTo {
		r.EnvelopeTo = j.RcptDomain
	}
	if j.SPF.Domain != "" {
		a := &AuthSPF{Domain: strings.ToLower(j.SPF.Domain), Result: spfResult(j.SPF.Status)}
		if j.SPF.Identity == spf.IdentityMailFrom {
			a.Scope = "mfrom"
		}
		r.AuthSPF = a
	}
	for _, d := range j.DKIM {
		if d.Domain == "" {
			continue // a signature without d= names nothing to report
		}
		r.AuthDKIM = append(r.AuthDKIM, AuthDKIM{Domain: strings.ToLower(d.Domain), Selector: d.Selector, Result: dkimResult(d.Status)})
	}

	// The disposition applied (RFC 9990 Section 3.1.6).
	switch {
	case v.DMARC.Status == dmarc.Pass && (v.DMARC.Applied == dmarc.PolicyReject || v.DMARC.Applied == dmarc.PolicyQuarantine):
		r.Disposition = "pass"
	case v.DMARC.Status == dmarc.Pass:
		r.Disposition = "none"
	case v.Action == policy.Reject:
		r.Disposition = "reject"
	case v.Enforced == dmarc.PolicyQuarantine:
		// Held, or delivered marked as failing (quarantine = mark).
		r.Disposition = "quarantine"
	default:
		r.Disposition = "none"
	}
	if v.DMARC.Status == dmarc.Fail {
		// RFC 9990 Section 3.1.1.9: why the disposition differs from the
		// policy; the verdict holds each reason once (policy.Override).
		for _, o := range v.Overrides {
			r.Reasons = append(r.Reasons, Reason{Type: string(o.Type), Comment: o.Comment})
		}
	}
	return r, pub, true
}

func passFail(ok bool) string {
	if ok {
		return "pass"
	}
	return "fail"
}

// spfResult maps an SPF result to RFC 9990 SPFResultType (the same names).
func spfResult(s spf.Status) string {
	if s == "" {
		return string(spf.None)
	}
	return string(s)
}

// dkimResult maps a DKIM result to RFC 9990 DKIMResultType (the same
// names).
func dkimResult(s dkim.Status) string {
	if s == "" {
		return string(dkim.None)
	}
	return string(s)
}

// storeRow turns a row into the store's form, its JSON; the fingerprint
// is added when it is written (fingerprint), off the reply path.
func storeRow(k store.Key, r Row) store.Row {
	var buf [256]byte
	return store.Row{Key: k, Data: string(appendRow(buf[:0], &r)), Count: 1}
}

// fingerprint is the store's key of a row's data. 64 bits: a collision
// among one domain's rows of one period (a few thousand at most) has a
// chance of about 2^-40.
func fingerprint(data string) string {
	sum := sha256.Sum256([]byte(data))
	return hex.EncodeToString(sum[:8])
}
