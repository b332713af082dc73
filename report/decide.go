package report

import (
	"context"
	"errors"
	"net"
	"net/url"
	"slices"
	"strings"

	"github.com/emersion/go-message/mail"

	"github.com/dmarc-milter/dmarc-milter/policy/dkim"
	"github.com/dmarc-milter/dmarc-milter/policy/dmarc"
	"github.com/dmarc-milter/dmarc-milter/policy/spf"
)

// Wanted applies the "fo" tag of the DMARC record in f.Verdict (RFC 9989
// Section 4.7; the default is "0") and returns the options that match, in
// the record's order, and whether any did. Only DMARC results pass and fail
// under a record can match.
func Wanted(f *Failure) (matched []string, ok bool) {
	v := &f.Verdict
	rec := v.DMARC.Record
	if rec == nil || (v.DMARC.Status != dmarc.StatusPass && v.DMARC.Status != dmarc.StatusFail) {
		return nil, false
	}
	fo := rec.FailureOptions
	if len(fo) == 0 {
		fo = []string{"0"}
	}
	for _, o := range fo {
		var m bool
		switch strings.ToLower(o) {
		case "0":
			// All mechanisms failed to produce an aligned pass.
			m = v.DMARC.Status == dmarc.StatusFail
		case "1":
			// Any mechanism failed to produce an aligned pass.
			m = !v.DMARC.SPFAligned || !v.DMARC.DKIMAligned
		case "d":
			// A signature failed evaluation, whatever its alignment.
			m = firstFailedDKIM(v.DKIM, nil) >= 0
		case "s":
			// SPF failed evaluation, whatever its alignment.
			m = spfFailed(v.SPF.Status)
		}
		if m && !slices.Contains(matched, strings.ToLower(o)) {
			matched = append(matched, strings.ToLower(o))
		}
	}
	return matched, len(matched) > 0
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

// firstFailedDKIM returns the index of the first failed signature for which
// keep returns true (any if keep is nil), -1 if none.
func firstFailedDKIM(rs []dkim.Result, keep func(dkim.Result) bool) int {
	for i, d := range rs {
		if dkimFailed(d.Status) && (keep == nil || keep(d)) {
			return i
		}
	}
	return -1
}

// analysis is what the report says about the failure.
type analysis struct {
	matched     []string
	authFailure string // Auth-Failure value (RFC 6591 Section 3.1, RFC 9991 Section 4)
	// alignment is the Identity-Alignment value: the mechanisms whose
	// aligned identifier failed, or "none" (RFC 9991 Section 4).
	alignment []string
	// sig is the index in Verdict.DKIM of the signature the DKIM-* fields
	// describe, -1 if none.
	sig int
	// spfAligned says the SPF domain is aligned with the From domain.
	spfAligned bool
}

// analyze works out the fields of the report for f.
//
// Alignment of a failed identifier is decided without DNS: equal to the
// From domain, or (relaxed mode) equal to or below the From domain's
// Organizational Domain. This is the check dmarc.Evaluate makes before its
// tree walk; it differs only if a DMARC record with psd=n lies between the
// identifier and that Organizational Domain.
func analyze(f *Failure) analysis {
	v := &f.Verdict
	a := analysis{sig: -1}
	a.matched, _ = Wanted(f)
	from := strings.ToLower(v.FromDomain)
	org := strings.ToLower(v.DMARC.OrgDomain)
	adkim, aspf := dmarc.AlignRelaxed, dmarc.AlignRelaxed
	if rec := v.DMARC.Record; rec != nil {
		adkim, aspf = rec.ADKIM, rec.ASPF
	}
	aligned := func(id string, mode dmarc.Align) bool {
		id = strings.ToLower(strings.TrimSuffix(id, "."))
		if id == "" {
			return false
		}
		if id == from {
			return true
		}
		return mode != dmarc.AlignStrict && org != "" && (id == org || strings.HasSuffix(id, "."+org))
	}

	a.spfAligned = aligned(v.SPF.Domain, aspf)
	alignedDKIM := func(d dkim.Result) bool { return aligned(d.Domain, adkim) }
	alignedFail := firstFailedDKIM(v.DKIM, alignedDKIM)
	if alignedFail >= 0 {
		a.alignment = append(a.alignment, "dkim")
		a.sig = alignedFail
	} else {
		a.sig = firstFailedDKIM(v.DKIM, nil)
	}
	if a.spfAligned && v.SPF.Status != spf.Pass {
		a.alignment = append(a.alignment, "spf")
	}
	if len(a.alignment) == 0 {
		a.alignment = []string{"none"}
	}

	switch {
	case slices.Contains(a.matched, "0") || slices.Contains(a.matched, "1"):
		a.authFailure = "dmarc"
	case slices.Contains(a.matched, "d"):
		a.authFailure = "signature"
		if a.sig >= 0 {
			switch err := v.DKIM[a.sig].Err; {
			case errors.Is(err, dkim.ErrBodyHash):
				a.authFailure = "bodyhash"
			case errors.Is(err, dkim.ErrKeyRevoked):
				a.authFailure = "revoked"
			}
		}
	case slices.Contains(a.matched, "s"):
		a.authFailure = "spf"
	default:
		a.authFailure = "dmarc"
	}
	return a
}

// destination is one mailto: address of "ruf".
type destination struct {
	addr    string // local@domain
	domain  string // lower-case, A-label as published
	maxSize uint64 // legacy !size, 0 if none
}

// destinations extracts the mailto: addresses of ruf (RFC 9989 Section
// 4.7: other schemes are not supported and ignored), without duplicates.
func destinations(ruf []dmarc.URI) []destination {
	var out []destination
	seen := map[string]bool{}
	for _, u := range ruf {
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
		// RFC 6068: a mailto URI may list several addresses.
		for _, one := range strings.Split(to, ",") {
			a, err := mail.ParseAddress(strings.TrimSpace(one))
			if err != nil {
				continue
			}
			at := strings.LastIndexByte(a.Address, '@')
			if at <= 0 || at == len(a.Address)-1 {
				continue
			}
			d := destination{addr: a.Address, domain: strings.ToLower(strings.TrimSuffix(a.Address[at+1:], ".")), maxSize: u.MaxSize}
			key := strings.ToLower(d.addr)
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

// authorized reports whether dest may receive reports for policyDomain:
// always if both have the same Organizational Domain, otherwise if
// "<policyDomain>._report._dmarc.<dest domain>" has a TXT record starting
// with "v=DMARC1" (RFC 9991 Section 5 by way of RFC 9990).
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

	ok, err := r.checkAuthorized(ctx, pd, destDomain)
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

func (r *Reporter) checkAuthorized(ctx context.Context, policyDomain, destDomain string) (bool, error) {
	if policyDomain == destDomain {
		return true, nil
	}
	po, err := dmarc.OrganizationalDomain(ctx, r.res, policyDomain)
	if err != nil {
		return false, err
	}
	do, err := dmarc.OrganizationalDomain(ctx, r.res, destDomain)
	if err != nil {
		return false, err
	}
	if po == do {
		return true, nil
	}
	txts, err := r.res.LookupTXT(ctx, policyDomain+"._report._dmarc."+destDomain+".")
	if err != nil {
		var de *net.DNSError
		if errors.As(err, &de) && de.IsNotFound {
			return false, nil
		}
		return false, err
	}
	for _, t := range txts {
		if dmarc.IsRecord(t) {
			return true, nil
		}
	}
	return false, nil
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
