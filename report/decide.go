package report

import (
	"context"
	"errors"
	"net"
	"net/url"
	"slices"
	"strings"

	"github.com/emersion/go-message/mail"

	"github.com/dmarc-milter/dmarc-milter/internal/rfc5322"
	"github.com/dmarc-milter/dmarc-milter/policy"
	"github.com/dmarc-milter/dmarc-milter/policy/dkim"
	"github.com/dmarc-milter/dmarc-milter/policy/dmarc"
	"github.com/dmarc-milter/dmarc-milter/policy/spf"
)

// Screen makes the checks that need no DNS and returns why no failure
// report is wanted for j under cfg, "" if one may be: the pre-filter of
// Reporter.Submit, and what eval says. Every message passes through it,
// so the checks that turn most messages away (off, no policy, no ruf, fo
// not matched) come before those that read the header.
func Screen(cfg *Config, j *policy.Judged) Reason {
	v := &j.Verdict
	rec := v.DMARC.Record
	switch {
	case !cfg.Enabled:
		return ReasonDisabled
	case rec == nil || v.FromErr != nil || v.FromDomain() == "":
		return ReasonNoPolicy
	case v.DMARC.Status != dmarc.Pass && v.DMARC.Status != dmarc.Fail:
		return ReasonNoPolicy
	case rec.PSD == dmarc.PSDYes:
		// RFC 9991 Section 2: ruf of psd=y records is not used.
		return ReasonPSD
	case len(rec.RUF) == 0:
		return ReasonNoDestination
	}
	if _, ok := Wanted(j); !ok {
		return ReasonNotWanted
	}
	switch {
	case isNullSender(j.MailFrom):
		return ReasonNullSender
	case v.Exempt.Local():
		return ReasonLocalClient
	case policy.InNetworks(j.ClientIP, cfg.ExcludeNetworks):
		return ReasonExcludedClient
	case !cfg.domainReported(v.FromDomain()):
		return ReasonDomain
	case autoSubmitted(j.Header):
		return ReasonAutoSubmitted
	case cfg.isReport(j):
		return ReasonReportMessage
	}
	return ""
}

func (cfg *Config) domainReported(domain string) bool {
	if dmarc.InDomainList(domain, cfg.DenyDomains) {
		return false
	}
	return len(cfg.AllowDomains) == 0 || dmarc.InDomainList(domain, cfg.AllowDomains)
}

func isNullSender(mailFrom string) bool {
	return spf.ReversePath(mailFrom) == ""
}

// autoSubmitted reports whether an Auto-Submitted field (RFC 3834 Section
// 5) says anything other than "no".
func autoSubmitted(h []policy.Field) bool {
	for _, f := range h {
		if !strings.EqualFold(strings.TrimSpace(f.Name), "Auto-Submitted") {
			continue
		}
		v, _ := rfc5322.StripComments(f.Value)
		if i := strings.IndexByte(v, ';'); i >= 0 {
			v = v[:i]
		}
		if !strings.EqualFold(strings.TrimSpace(v), "no") {
			return true
		}
	}
	return false
}

// isReport reports whether the message is itself a report: multipart/report
// (DSNs, ARF, TLS reports), a DMARC aggregate report (RFC 9990 subject
// "Report Domain: ..."), or mail from our own report address.
func (cfg *Config) isReport(f *policy.Judged) bool {
	own := ""
	if a, err := mail.ParseAddress(cfg.From); err == nil {
		own = strings.ToLower(a.Address)
	}
	if own != "" && strings.EqualFold(spf.ReversePath(f.MailFrom), own) {
		return true
	}
	for _, h := range f.Header {
		name := strings.TrimSpace(h.Name)
		v := strings.TrimSpace(h.Value)
		switch {
		case strings.EqualFold(name, "Content-Type"):
			ct, _ := rfc5322.StripComments(v)
			if strings.HasPrefix(strings.ToLower(strings.TrimSpace(ct)), "multipart/report") {
				return true
			}
		case strings.EqualFold(name, "Subject"):
			if strings.HasPrefix(strings.ToLower(v), "report domain:") {
				return true
			}
		case strings.EqualFold(name, "From"), strings.EqualFold(name, "Sender"):
			if own == "" {
				continue
			}
			if as, err := mail.ParseAddressList(strings.ReplaceAll(v, "\n", "")); err == nil {
				for _, a := range as {
					if strings.EqualFold(a.Address, own) {
						return true
					}
				}
			}
		}
	}
	return false
}

// Wanted applies the "fo" tag of the DMARC record in j's verdict (RFC 9989
// Section 4.7; dmarc.FailureAll by default) and returns the options that
// match, and whether any did. Only DMARC results pass and fail under a
// record can match.
func Wanted(j *policy.Judged) (matched dmarc.FailureOptions, ok bool) {
	v := &j.Verdict
	rec := v.DMARC.Record
	if rec == nil || (v.DMARC.Status != dmarc.Pass && v.DMARC.Status != dmarc.Fail) {
		return 0, false
	}
	fo := rec.FailureOptions
	if fo == 0 {
		fo = dmarc.FailureAll
	}
	for _, o := range []struct {
		opt   dmarc.FailureOptions
		match bool
	}{
		// All mechanisms failed to produce an aligned pass.
		{dmarc.FailureAll, v.DMARC.Status == dmarc.Fail},
		// Any mechanism failed to produce an aligned pass.
		{dmarc.FailureAny, !v.DMARC.SPFAligned || !v.DMARC.DKIMAligned},
		// A signature failed evaluation, whatever its alignment.
		{dmarc.FailureDKIM, firstFailedDKIM(j.DKIM) >= 0},
		// SPF failed evaluation, whatever its alignment.
		{dmarc.FailureSPF, spfFailed(j.SPF.Status)},
	} {
		if fo.Has(o.opt) && o.match {
			matched |= o.opt
		}
	}
	return matched, matched != 0
}

// dkimFailed reports whether a DKIM result is a verification failure
// (temperror is transient and none means no signature).
func dkimFailed(s dkim.Status) bool {
	switch s {
	case dkim.Fail, dkim.PermError, dkim.Policy, dkim.Neutral:
		return true
	}
	return false
}

// spfFailed reports whether an SPF result is a failure for fo=s.
func spfFailed(s spf.Status) bool {
	return s == spf.Fail || s == spf.SoftFail || s == spf.PermError
}

// firstFailedDKIM returns the index of the first failed signature, -1 if
// none.
func firstFailedDKIM(rs []dkim.Result) int {
	for i, d := range rs {
		if dkimFailed(d.Status) {
			return i
		}
	}
	return -1
}

// analysis is what the report says about the failure.
type analysis struct {
	matched     dmarc.FailureOptions
	authFailure string // Auth-Failure value (RFC 6591 Section 3.1, RFC 9991 Section 4)
	// alignment is the Identity-Alignment value (RFC 9991 Section 4): the
	// mechanisms whose identifier is aligned with the From domain, whatever
	// their result ("dkim", "spf", both, or "none"), as in RFC 9991's
	// example (a failing aligned signature gives "dkim").
	alignment []string
	// sig is the index in Verdict.DKIM of the signature the DKIM-* fields
	// describe, -1 if none.
	sig int
	// spfAligned says the SPF domain is aligned with the From domain;
	// dkimAligned says it of each signature's domain, as Verdict.DKIM.
	spfAligned  bool
	dkimAligned []bool
	// spfRecords are the SPF records of the MAIL FROM domain, for SPF-DNS
	// (looked up by the Reporter when SPF failed for an aligned
	// identifier).
	spfRecords []string
}

// analyze works out the fields of the report for j. Alignment is
// dmarc.Aligned under the record's modes, for failed identifiers as for
// passing ones; orgDomain gives the Organizational Domains it needs.
func analyze(j *policy.Judged, orgDomain func(name string) string) analysis {
	v := &j.Verdict
	a := analysis{sig: -1}
	a.matched, _ = Wanted(j)
	from, _ := dmarc.NormalizeDomain(v.FromDomain())
	adkim, aspf := dmarc.AlignRelaxed, dmarc.AlignRelaxed
	if rec := v.DMARC.Record; rec != nil {
		adkim, aspf = rec.ADKIM, rec.ASPF
	}
	aligned := func(id string, mode dmarc.Align) bool {
		id, err := dmarc.NormalizeDomain(id)
		return err == nil && dmarc.Aligned(id, from, mode, orgDomain)
	}

	a.spfAligned = aligned(j.SPF.Domain, aspf)
	a.dkimAligned = make([]bool, len(j.DKIM))
	for i, d := range j.DKIM {
		a.dkimAligned[i] = aligned(d.Domain, adkim)
	}
	alignedFail := -1
	for i, d := range j.DKIM {
		if dkimFailed(d.Status) && a.dkimAligned[i] {
			alignedFail = i
			break
		}
	}
	if alignedFail >= 0 {
		a.sig = alignedFail
	} else {
		a.sig = firstFailedDKIM(j.DKIM)
	}
	if slices.Contains(a.dkimAligned, true) {
		a.alignment = append(a.alignment, "dkim")
	}
	if a.spfAligned {
		a.alignment = append(a.alignment, "spf")
	}
	if len(a.alignment) == 0 {
		a.alignment = []string{"none"}
	}

	// Auth-Failure (RFC 6591 Section 3.1, RFC 9991 Section 4) names what
	// the report is about: "dmarc" for a DMARC failure (fo=0, or fo=1 with
	// DMARC failed); otherwise the mechanism that failed: the signature
	// ("bodyhash", "revoked", "signature") for fo=d or for fo=1 with DMARC
	// passed through SPF, SPF for fo=s.
	sigFailure := func() string {
		switch err := j.DKIM[a.sig].Err; {
		case errors.Is(err, dkim.ErrBodyHash):
			return "bodyhash"
		case errors.Is(err, dkim.ErrKeyRevoked):
			return "revoked"
		}
		return "signature"
	}
	dmarcFailed := v.DMARC.Status == dmarc.Fail
	switch {
	case dmarcFailed && (a.matched.Has(dmarc.FailureAll) || a.matched.Has(dmarc.FailureAny)):
		a.authFailure = "dmarc"
	case (a.matched.Has(dmarc.FailureDKIM) || a.matched.Has(dmarc.FailureAny)) && a.sig >= 0:
		a.authFailure = sigFailure()
	case (a.matched.Has(dmarc.FailureSPF) || a.matched.Has(dmarc.FailureAny)) && j.SPF.Status != spf.Pass:
		a.authFailure = "spf"
	default:
		// DMARC passed and nothing failed outright: DKIM gave no aligned
		// pass (fo=1), e.g. an unsigned message that passed SPF.
		a.authFailure = "dmarc"
	}
	return a
}

// knownOrgDomain is the Organizational Domain lookup of Build, which does
// no DNS: the From domain's is the one DMARC found (if it needed it), and
// a name at or below it is taken to share it (true unless a record with
// psd=n lies between them).
func knownOrgDomain(v *policy.Verdict) func(string) string {
	from, _ := dmarc.NormalizeDomain(v.FromDomain())
	org, _ := dmarc.NormalizeDomain(v.DMARC.OrgDomain)
	return func(name string) string {
		if name == from || org != "" && (name == org || strings.HasSuffix(name, "."+org)) {
			return org
		}
		return ""
	}
}

// Destination is one mailto: address of a "rua" or "ruf" URI.
type Destination struct {
	Address string // local@domain
	Domain  string // lower-case, as published
	MaxSize uint64 // the URI's legacy !size, 0 if none
}

// Destinations extracts the mailto: addresses of uris (RFC 9989 Section
// 4.7: other schemes are not supported and ignored; RFC 6068: one URI may
// hold several addresses), without duplicates, each with its URI's
// MaxSize. Failure reports, aggregate reports and "dmarc-milter check" all
// take a policy's destinations from here, and Authorized says which may
// receive reports.
func Destinations(uris []dmarc.URI) []Destination {
	var out []Destination
	seen := map[string]bool{}
	for _, u := range uris {
		pu, err := url.Parse(u.Address)
		if err != nil || !strings.EqualFold(pu.Scheme, "mailto") {
			continue
		}
		to := pu.Opaque
		if to == "" {
			to = pu.Path
		}
		if s, err := url.PathUnescape(to); err == nil {
			to = s
		}
		for _, one := range strings.Split(to, ",") {
			a, err := mail.ParseAddress(strings.TrimSpace(one))
			if err != nil {
				continue
			}
			at := strings.LastIndexByte(a.Address, '@')
			if at <= 0 || at == len(a.Address)-1 {
				continue
			}
			d := Destination{Address: a.Address, Domain: strings.ToLower(strings.TrimSuffix(a.Address[at+1:], ".")), MaxSize: u.MaxSize}
			key := strings.ToLower(d.Address)
			if seen[key] {
				continue
			}
			seen[key] = true
			out = append(out, d)
		}
	}
	return out
}

// authzEntry caches an external destination check.
type authzEntry struct {
	ok      bool
	expires int64 // unix nanoseconds
}

// authorized is Authorized, its answers kept for externalCacheTTL.
func (r *Reporter) authorized(ctx context.Context, policyDomain, destDomain string) (bool, error) {
	pd := strings.ToLower(strings.TrimSuffix(policyDomain, "."))
	key := pd + " " + destDomain
	now := r.now().UnixNano()
	r.mu.Lock()
	if e, ok := r.authz[key]; ok && now < e.expires {
		r.mu.Unlock()
		return e.ok, nil
	}
	r.mu.Unlock()

	ok, err := Authorized(ctx, r.res, pd, destDomain)
	if err != nil {
		return false, err
	}
	r.mu.Lock()
	if len(r.authz) > 10000 {
		clear(r.authz) // a crude bound; the DNS cache behind stays warm
	}
	r.authz[key] = authzEntry{ok: ok, expires: now + int64(externalCacheTTL)}
	r.mu.Unlock()
	return ok, nil
}

// Authorization is why a report destination may receive reports, or that
// it may not.
type Authorization int

// Authorizations.
const (
	Unauthorized     Authorization = iota // outside the organization, no authorization record
	SameOrganization                      // the same Organizational Domain as the policy domain
	ExternalRecord                        // "<policy domain>._report._dmarc.<destination>" authorizes it
)

// Authorized reports whether a report destination in destDomain may
// receive reports about policyDomain (RFC 9990 Section 3, RFC 9991 Section
// 3): always if both have the same Organizational Domain, otherwise if
// "<policyDomain>._report._dmarc.<destDomain>" has a TXT record starting
// with "v=DMARC1". A DNS failure is an error: nothing is known.
func Authorized(ctx context.Context, res Resolver, policyDomain, destDomain string) (bool, error) {
	a, err := Authorize(ctx, res, policyDomain, destDomain)
	return a != Unauthorized, err
}

// Authorize is Authorized, saying why.
func Authorize(ctx context.Context, res Resolver, policyDomain, destDomain string) (Authorization, error) {
	policyDomain = strings.ToLower(strings.TrimSuffix(policyDomain, "."))
	if policyDomain == destDomain {
		return SameOrganization, nil
	}
	po, err := dmarc.OrganizationalDomain(ctx, res, policyDomain)
	if err != nil {
		return Unauthorized, err
	}
	do, err := dmarc.OrganizationalDomain(ctx, res, destDomain)
	if err != nil {
		return Unauthorized, err
	}
	if po == do {
		return SameOrganization, nil
	}
	txts, err := res.LookupTXT(ctx, policyDomain+"._report._dmarc."+destDomain+".")
	if err != nil {
		var de *net.DNSError
		if errors.As(err, &de) && de.IsNotFound {
			return Unauthorized, nil
		}
		return Unauthorized, err
	}
	for _, t := range txts {
		if dmarc.IsRecord(t) {
			return ExternalRecord, nil
		}
	}
	return Unauthorized, nil
}

// spfRecords looks up the SPF records of domain for SPF-DNS.
func (r *Reporter) spfRecords(ctx context.Context, domain string) []string {
	txts, err := r.res.LookupTXT(ctx, strings.TrimSuffix(domain, ".")+".")
	if err != nil {
		return nil
	}
	var out []string
	for _, t := range txts {
		if l := strings.ToLower(t); l == "v=spf1" || strings.HasPrefix(l, "v=spf1 ") {
			out = append(out, t)
		}
	}
	return out
}
