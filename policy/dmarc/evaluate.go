package dmarc

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// Status is a DMARC result (RFC 9989 Section 9.2).
type Status string

// Results.
const (
	StatusPass      Status = "pass"      // A record applies and an identifier is aligned.
	StatusFail      Status = "fail"      // A record applies, no aligned identifier.
	StatusNone      Status = "none"      // No record applies.
	StatusTempError Status = "temperror" // Transient error, e.g. DNS.
	StatusPermError Status = "permerror" // E.g. a malformed record.
)

// DKIMResult is the outcome of verifying one DKIM signature.
type DKIMResult struct {
	Domain string // The "d=" tag: the DKIM Signing Domain.
	Pass   bool
	// TempError is true if verification could not complete because of a
	// transient error (e.g. the key lookup timed out).
	TempError bool
}

// Input holds what Evaluate needs about a message.
type Input struct {
	// FromDomain is the Author Domain, e.g. from FromDomain.
	FromDomain string

	// SPFDomain is the domain SPF checked: the MAIL FROM domain, or the HELO
	// domain for the null sender. SPFPass is whether SPF passed;
	// SPFTempError whether SPF ended in temperror.
	SPFDomain    string
	SPFPass      bool
	SPFTempError bool

	// DKIM holds one result per DKIM signature.
	DKIM []DKIMResult

	// Exists reports whether a domain exists, to choose between "sp" and
	// "np". RFC 9989 Section 3.2.13 and Appendix A.4: a domain does not exist
	// when a query for it yields NXDOMAIN (RFC 8020); NODATA means it exists.
	// It is called only for an Author Domain below the Policy Domain, and only
	// if the np and sp policies differ. Nil means "assume it exists".
	Exists func(ctx context.Context, domain string) (bool, error)
}

// Result is the outcome of DMARC evaluation.
type Result struct {
	Status Status

	// FromDomain is the normalized Author Domain; PolicyDomain where the
	// record was found; OrgDomain the Author Domain's Organizational Domain.
	FromDomain, PolicyDomain, OrgDomain string

	// Record is the DMARC Policy Record applied, nil if none.
	Record *Record

	// Policy is the policy that applies to the message (p, sp or np,
	// chosen per RFC 9989 Section 4.10.1), before the testing-mode downgrade.
	// Applied is Policy after the "t=y" (or legacy "pct=0") downgrade, to be
	// acted on when Status is StatusFail. Both are set whenever a record
	// applies, also when the message passes.
	Policy  Policy
	Applied Policy

	// SPFAligned and DKIMAligned tell whether a passing SPF or DKIM
	// identifier is aligned with the Author Domain. AlignedDKIMDomain is the
	// first aligned passing DKIM domain.
	SPFAligned, DKIMAligned bool
	AlignedDKIMDomain       string

	// Err is the cause of a temperror or permerror (and ErrNoRecord for
	// StatusNone).
	Err error
}

// Evaluate applies DMARC (RFC 9989 Section 5.3) to a message whose SPF and
// DKIM results are in in. DNS lookups of one evaluation are cached, so the
// tree walks for the Author Domain and for the identifiers share queries.
func Evaluate(ctx context.Context, r Resolver, in Input) Result {
	res := Result{}
	from, err := normalizeDomain(in.FromDomain)
	if err != nil {
		res.Status, res.Err = StatusPermError, err
		res.FromDomain = in.FromDomain
		return res
	}
	res.FromDomain = from
	cr := &cachingResolver{r: r, m: map[string]cachedTXT{}}

	// Section 5.3.2: policy discovery.
	d, err := Discover(ctx, cr, from)
	res.PolicyDomain, res.OrgDomain = d.Domain, d.OrgDomain
	switch {
	case err == nil:
	case errors.Is(err, ErrNoRecord):
		res.Status, res.Err = StatusNone, err
		return res
	case IsTemporary(err):
		res.Status, res.Err = StatusTempError, err
		return res
	default:
		// A malformed record (*SyntaxError, RFC 9989 Section 9.2) or an
		// unusable domain.
		res.Status, res.Err = StatusPermError, err
		return res
	}
	rec := d.Record
	res.Record = rec

	// Sections 5.3.3-5.3.5: alignment of the authenticated identifiers.
	var tempErrs []error
	if in.SPFPass || in.SPFTempError {
		ok, err := aligned(ctx, cr, from, d.OrgDomain, in.SPFDomain, rec.ASPF)
		switch {
		case err != nil:
			tempErrs = append(tempErrs, err)
		case ok && in.SPFPass:
			res.SPFAligned = true
		case ok:
			tempErrs = append(tempErrs, fmt.Errorf("%w: SPF temperror for aligned domain %q", ErrTempError, in.SPFDomain))
		}
	}
	for _, dk := range in.DKIM {
		if !dk.Pass && !dk.TempError {
			continue
		}
		ok, err := aligned(ctx, cr, from, d.OrgDomain, dk.Domain, rec.ADKIM)
		switch {
		case err != nil:
			tempErrs = append(tempErrs, err)
		case ok && dk.Pass:
			if !res.DKIMAligned {
				res.DKIMAligned = true
				res.AlignedDKIMDomain, _ = normalizeDomain(dk.Domain)
			}
		case ok:
			tempErrs = append(tempErrs, fmt.Errorf("%w: DKIM temperror for aligned domain %q", ErrTempError, dk.Domain))
		}
	}
	pass := res.SPFAligned || res.DKIMAligned

	// Section 4.10.1: which policy applies.
	policy, err := choosePolicy(ctx, in.Exists, from, d.Domain, rec)
	if err != nil && !pass {
		tempErrs = append(tempErrs, err)
	}
	res.Policy = policy
	res.Applied = policy
	if rec.Testing {
		res.Applied = policy.downgrade()
	}

	switch {
	case pass:
		res.Status = StatusPass
	case len(tempErrs) > 0:
		// Section 5.3.6: a lookup that did not complete could have produced
		// an aligned pass, so the message neither passes nor fails.
		res.Status, res.Err = StatusTempError, errors.Join(tempErrs...)
	default:
		res.Status = StatusFail
	}
	return res
}

// choosePolicy picks the policy for the Author Domain from the record found
// at policyDomain (RFC 9989 Section 4.10.1): "p" if the record is the
// Author Domain's own; for a subdomain of the policy domain, "sp" if the
// Author Domain exists and "np" if it does not, each falling back as
// described in Section 4.7. If the existence check fails, the error wraps
// ErrTempError and the existing-subdomain policy is returned.
func choosePolicy(ctx context.Context, exists func(context.Context, string) (bool, error), from, policyDomain string, rec *Record) (Policy, error) {
	if from == policyDomain {
		return rec.Policy, nil
	}
	sp, np := rec.subdomainPolicy(), rec.nonexistentPolicy()
	if sp == np || exists == nil {
		return sp, nil
	}
	ok, err := exists(ctx, from)
	if err != nil {
		return sp, fmt.Errorf("%w: checking existence of %q: %w", ErrTempError, from, err)
	}
	if !ok {
		return np, nil
	}
	return sp, nil
}

// aligned reports whether ident is aligned with the Author Domain from,
// whose Organizational Domain is org (RFC 9989 Section 4.4): strict mode
// requires identical names, relaxed mode the same Organizational Domain.
// Names compare case-insensitively. An identifier that is not a valid
// domain name is not aligned.
func aligned(ctx context.Context, r Resolver, from, org, ident string, mode Align) (bool, error) {
	id, err := normalizeDomain(ident)
	if err != nil {
		return false, nil
	}
	if id == from {
		return true, nil
	}
	if mode == AlignStrict {
		return false, nil
	}
	// An Organizational Domain is always the name itself or a parent of it,
	// so ident can only share org if it is org or below it; this avoids a
	// tree walk for unrelated identifiers.
	if id != org && !strings.HasSuffix(id, "."+org) {
		return false, nil
	}
	idOrg, err := OrganizationalDomain(ctx, r, id)
	if err != nil {
		return false, err
	}
	return idOrg == org, nil
}

type cachedTXT struct {
	txts []string
	err  error
}

// cachingResolver remembers the answers of one evaluation. Not safe for
// concurrent use; Evaluate uses it sequentially.
type cachingResolver struct {
	r Resolver
	m map[string]cachedTXT
}

func (c *cachingResolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	k := strings.ToLower(name)
	if v, ok := c.m[k]; ok {
		return v.txts, v.err
	}
	txts, err := c.r.LookupTXT(ctx, name)
	c.m[k] = cachedTXT{txts, err}
	return txts, err
}
