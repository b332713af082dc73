package dmarc

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Status is a DMARC result (RFC 9989 Section 9.2).
type Status string

// Results.
const (
	Pass      Status = "pass"      // A record applies and an identifier is aligned.
	Fail      Status = "fail"      // A record applies, no aligned identifier.
	None      Status = "none"      // No record applies.
	TempError Status = "temperror" // Transient error, e.g. DNS.
	PermError Status = "permerror" // E.g. a malformed record.
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

	// Records, if set, keeps parsed records across evaluations.
	Records *RecordCache

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
	// record was found; OrgDomain the Author Domain's Organizational
	// Domain, set only when the evaluation needed it (a policy found by the
	// tree walk, or the relaxed alignment of a differing identifier), ""
	// otherwise (see OrganizationalDomain).
	FromDomain, PolicyDomain, OrgDomain string

	// Record is the DMARC Policy Record applied, nil if none.
	Record *Record

	// Policy is the policy that applies to the message (p, sp or np,
	// chosen per RFC 9989 Section 4.10.1), before the testing-mode downgrade.
	// Applied is Policy after the "t=y" (or legacy "pct=0") downgrade, to be
	// acted on when Status is Fail. Both are set whenever a record
	// applies, also when the message passes.
	Policy  Policy
	Applied Policy

	// SPFAligned and DKIMAligned tell whether a passing SPF or DKIM
	// identifier is aligned with the Author Domain. AlignedDKIMDomain is the
	// first aligned passing DKIM domain.
	SPFAligned, DKIMAligned bool
	AlignedDKIMDomain       string

	// Requested is what DMARC asks the receiver to do (Section 5.3):
	// Applied when Status is fail, none otherwise. For a temperror it is
	// set when every possible answer of the failed lookups leads to the
	// same request (the failure cannot change what happens to the
	// message), and "" when the failure leaves it unknown.
	Requested Policy

	// Err is the cause of a temperror or permerror (and ErrNoRecord for
	// None).
	Err error

	// Ignored lists the lookup failures whose answers could not have
	// changed the result or the request, for logging.
	Ignored []error
}

// Evaluate applies DMARC (RFC 9989 Section 5.3) to a message whose SPF and
// DKIM results are in in. DNS lookups of one evaluation are cached, so the
// tree walks for the Author Domain and for the identifiers share queries.
//
// It asks only what the verdict needs, in RFC 9989's order: the Author
// Domain's own record first (Section 4.10.1); the DNS Tree Walk for a
// policy only when there is none; and the Organizational Domain
// (Section 4.10.2) only when an identifier that passed differs from the
// Author Domain and relaxed alignment could make it align. A message
// without any passing identifier fails without a walk.
//
// A lookup that fails (a temporary DNS error) is weighed by what its answer
// could have been: no record, a record without psd, with psd=y or with
// psd=n (and, for an SPF or DKIM temperror, pass or not; for the existence
// check, NXDOMAIN or not). If every possibility leads to the same result
// and request, the failure cannot change the verdict: it is listed in
// Result.Ignored and the result stands. If only the result could differ
// (say pass against fail under p=none), the result is temperror with the
// Requested policy known. Otherwise the result is temperror and the
// Requested policy unknown ("").
func Evaluate(ctx context.Context, r Resolver, in Input) Result {
	from, err := NormalizeDomain(in.FromDomain)
	if err != nil {
		return Result{Status: PermError, Err: err, FromDomain: in.FromDomain, Requested: PolicyNone}
	}
	e := &evaluation{ctx: ctx, r: &cachingResolver{r: r, records: in.Records}, from: from, in: in}
	return e.run()
}

// evaluation is the state of one Evaluate call.
type evaluation struct {
	ctx  context.Context
	r    Resolver
	from string
	in   Input

	own      walkEntry // the Author Domain's record
	ownFound bool
	walks    map[string][]walkEntry // tree walks by starting name
	failed   []string               // names whose lookup failed, in order
	errs     []error                // those failures
	exists   *bool                  // result of the existence check, nil if not made or failed
	existErr error
}

// maxUnknowns bounds the failed lookups weighed against each other; with
// more, the outcome is taken as unknown (4^3 possibilities at most).
const maxUnknowns = 3

// candidate is an identifier that passed (or whose check failed
// temporarily, maybe) and that Evaluate tries to align.
type candidate struct {
	domain string // normalized
	spf    bool   // the SPF identifier, else a DKIM one
	maybe  bool   // the check ended in temperror
}

// outcome is the verdict under one possibility of the failed lookups.
type outcome struct {
	status    Status
	requested Policy // "" when a record of unknown content would apply
}

func (e *evaluation) run() Result {
	res := Result{FromDomain: e.from}

	// Section 4.10.1: the Author Domain's own record first.
	own, found, err := lookupRecord(e.ctx, e.r, e.from)
	if err != nil {
		res.Status, res.Err = TempError, err
		// Whatever that record holds, an identical identifier that passed
		// aligns in either mode: pass, or none without any record.
		if e.identicalPass() {
			res.Requested = PolicyNone
		}
		return res
	}
	e.own, e.ownFound = own, found
	if !found {
		e.walk(e.from)
	}

	// The base possibility: every failed name holds no record, temperror
	// identifiers did not pass, existence as found.
	cands := e.candidates()
	base, detail := e.outcomeUnder(map[string]PSD{}, cands, false, nil)
	res.PolicyDomain, res.OrgDomain = detail.policyDomain, detail.orgDomain
	res.Record, res.Policy, res.Applied = detail.rec, detail.policy, detail.applied
	res.SPFAligned, res.DKIMAligned, res.AlignedDKIMDomain = detail.spf, detail.dkim, detail.dkimDomain
	res.Status, res.Err = base.status, detail.err

	uncertain := len(e.errs) > 0 || e.existErr != nil && detail.askedExists
	for _, c := range cands {
		uncertain = uncertain || c.maybe && detail.maybeAligned[c]
	}
	if !uncertain {
		res.Requested = base.requested
		return res
	}

	// Weigh every possibility of what failed. First make every walk a
	// possibility could need, so that all failures are known.
	for _, c := range cands {
		if c.domain != e.from && shareParent(c.domain, e.from) {
			e.walk(e.from)
			e.walk(c.domain)
		}
	}
	causes := slices.Clone(e.errs)
	for _, c := range cands {
		if c.maybe && detail.maybeAligned[c] {
			causes = append(causes, tempIdentErr(c))
		}
	}
	if e.existErr != nil && detail.askedExists {
		causes = append(causes, e.existErr)
	}
	same, sameRequested := true, true
	if len(e.failed) > maxUnknowns {
		same, sameRequested = false, false
	} else {
		for _, h := range hypotheses(e.failed) {
			for _, tempPass := range []bool{false, true} {
				for _, ex := range []*bool{nil, ptr(true), ptr(false)} {
					if ex != nil && (e.existErr == nil || !detail.askedExists) {
						continue
					}
					o, _ := e.outcomeUnder(h, cands, tempPass, ex)
					same = same && o == base
					sameRequested = sameRequested && o.requested == base.requested && o.requested != ""
				}
			}
		}
	}
	switch {
	case same && base.requested != "":
		// The failures cannot change the verdict.
		res.Ignored = causes
		res.Requested = base.requested
	default:
		// The result is not known: alignment found under one possibility
		// is not claimed.
		res.Status, res.Err = TempError, errors.Join(causes...)
		res.SPFAligned, res.DKIMAligned, res.AlignedDKIMDomain = false, false, ""
		if sameRequested {
			res.Requested = base.requested
		}
	}
	return res
}

func ptr[T any](v T) *T { return &v }

// tempIdentErr says that an aligned identifier's check ended in temperror.
func tempIdentErr(c candidate) error {
	what := "DKIM"
	if c.spf {
		what = "SPF"
	}
	return fmt.Errorf("%w: %s temperror for aligned domain %q", ErrTempError, what, c.domain)
}

// hypotheses returns every assignment of a state to the failed names:
// 0 no record, 'u' a record without psd, 'y' psd=y, 'n' psd=n.
func hypotheses(names []string) []map[string]PSD {
	out := []map[string]PSD{{}}
	for _, n := range names {
		var next []map[string]PSD
		for _, h := range out {
			for _, st := range []PSD{0, PSDUnknown, PSDYes, PSDNo} {
				c := make(map[string]PSD, len(h)+1)
				for k, v := range h {
					c[k] = v
				}
				c[n] = st
				next = append(next, c)
			}
		}
		out = next
	}
	return out
}

// identicalPass reports whether an identifier identical to the Author
// Domain passed: it aligns in strict and relaxed mode alike (Section 4.4).
func (e *evaluation) identicalPass() bool {
	if e.in.SPFPass && sameDomain(e.in.SPFDomain, e.from) {
		return true
	}
	for _, d := range e.in.DKIM {
		if d.Pass && sameDomain(d.Domain, e.from) {
			return true
		}
	}
	return false
}

func sameDomain(ident, from string) bool {
	id, err := NormalizeDomain(ident)
	return err == nil && id == from
}

// candidates lists the identifiers worth aligning: those that passed or
// ended in temperror, with a valid domain name.
func (e *evaluation) candidates() []candidate {
	var cs []candidate
	add := func(domain string, spf, pass, temp bool) {
		if !pass && !temp {
			return
		}
		id, err := NormalizeDomain(domain)
		if err != nil {
			return // not a domain name: not aligned
		}
		cs = append(cs, candidate{domain: id, spf: spf, maybe: !pass})
	}
	add(e.in.SPFDomain, true, e.in.SPFPass, e.in.SPFTempError)
	for _, d := range e.in.DKIM {
		add(d.Domain, false, d.Pass, d.TempError)
	}
	return cs
}

// walk performs (once) the DNS Tree Walk from domain, keeping failed names
// as entries to be weighed.
func (e *evaluation) walk(domain string) []walkEntry {
	if w, ok := e.walks[domain]; ok {
		return w
	}
	entries, _, _ := treeWalk(e.ctx, e.r, domain, true)
	for _, en := range entries {
		if en.failed != nil && !slices.Contains(e.failed, en.domain) {
			e.failed = append(e.failed, en.domain)
			e.errs = append(e.errs, en.failed)
		}
	}
	if e.walks == nil {
		e.walks = map[string][]walkEntry{}
	}
	e.walks[domain] = entries
	return entries
}

// concrete returns the walk from domain as it would be had each failed name
// the state h gives it, cut after the first psd=y or psd=n record where the
// walk would have stopped.
func (e *evaluation) concrete(domain string, h map[string]PSD) []walkEntry {
	var out []walkEntry
	for _, en := range e.walk(domain) {
		if en.failed != nil {
			st := h[en.domain]
			if st == 0 {
				continue
			}
			en = walkEntry{domain: en.domain, unknown: true, hypoPSD: st}
		}
		out = append(out, en)
		if p := en.psd(); p == PSDYes || p == PSDNo {
			break
		}
	}
	return out
}

// details holds the details of the outcome under the base possibility.
type details struct {
	policyDomain, orgDomain string
	rec                     *Record
	policy, applied         Policy
	spf, dkim               bool
	dkimDomain              string
	err                     error
	askedExists             bool
	maybeAligned            map[candidate]bool
}

// recordErrorStatus is the result for a record that cannot be applied:
// none for one that asks for no DMARC processing (RFC 9989 Section
// 4.10.1: no valid p and no valid rua), permerror for a malformed one
// (Section 9.2).
func recordErrorStatus(err error) Status {
	if errors.Is(err, ErrNoPolicy) {
		return None
	}
	return PermError
}

// outcomeUnder computes the outcome with the failed names in the states h, the
// temperror identifiers counted as passing if tempPass, and the Author
// Domain's existence ex (nil: as found, or assumed existing).
func (e *evaluation) outcomeUnder(h map[string]PSD, cands []candidate, tempPass bool, ex *bool) (outcome, details) {
	var d details
	var rec *Record
	unknownRec := false
	if e.ownFound {
		d.policyDomain = e.from
		if e.own.err != nil {
			d.err = e.own.err
			return outcome{recordErrorStatus(e.own.err), PolicyNone}, d
		}
		rec = e.own.rec
	} else {
		entries := e.concrete(e.from, h)
		d.orgDomain = selectOrgDomain(e.from, entries)
		chosen := chooseRecord(e.from, d.orgDomain, entries)
		if chosen == nil {
			d.err = ErrNoRecord
			return outcome{None, PolicyNone}, d
		}
		d.policyDomain = chosen.domain
		switch {
		case chosen.unknown:
			unknownRec = true
		case chosen.err != nil:
			d.err = chosen.err
			return outcome{recordErrorStatus(chosen.err), PolicyNone}, d
		default:
			rec = chosen.rec
		}
	}

	// Sections 4.4, 5.3.3-5.3.5: alignment.
	pass := false
	for _, c := range cands {
		ok := e.aligned(c, rec, unknownRec, h, &d)
		if c.maybe {
			if ok {
				if d.maybeAligned == nil {
					d.maybeAligned = map[candidate]bool{}
				}
				d.maybeAligned[c] = true
				if tempPass {
					pass = true
				}
			}
			continue
		}
		if !ok {
			continue
		}
		pass = true
		if c.spf {
			d.spf = true
		} else if !d.dkim {
			d.dkim, d.dkimDomain = true, c.domain
		}
	}
	if unknownRec {
		if pass {
			return outcome{Pass, PolicyNone}, d
		}
		return outcome{Fail, ""}, d
	}
	d.rec = rec

	// Section 4.10.1: which policy applies.
	policy, asked, existErr := e.choosePolicy(d.policyDomain, rec, ex)
	d.askedExists = asked
	if existErr != nil && e.existErr == nil {
		e.existErr = existErr
	}
	d.policy, d.applied = policy, policy
	if rec.Testing {
		d.applied = policy.downgrade()
	}
	if pass {
		return outcome{Pass, PolicyNone}, d
	}
	return outcome{Fail, d.applied}, d
}

// aligned reports whether the identifier c is aligned with the Author
// Domain (Section 4.4, Aligned) under the possibility h. The Author
// Domain's Organizational Domain, if it was needed, is kept in d.
func (e *evaluation) aligned(c candidate, rec *Record, unknownRec bool, h map[string]PSD, d *details) bool {
	mode := AlignRelaxed
	if !unknownRec {
		mode = rec.ADKIM
		if c.spf {
			mode = rec.ASPF
		}
	}
	return Aligned(c.domain, e.from, mode, func(name string) string {
		org := selectOrgDomain(name, e.concrete(name, h))
		if name == e.from && d.orgDomain == "" {
			d.orgDomain = org
		}
		return org
	})
}

// choosePolicy picks the policy for the Author Domain from the record found
// at policyDomain (RFC 9989 Section 4.10.1): "p" if the record is the
// Author Domain's own; for a subdomain of the policy domain, "sp" if the
// Author Domain exists and "np" if it does not, each falling back as
// described in Section 4.7. ex, if set, overrides the existence check; if
// the check fails, the existing-subdomain policy is returned with the
// error. asked says whether existence mattered.
func (e *evaluation) choosePolicy(policyDomain string, rec *Record, ex *bool) (p Policy, asked bool, err error) {
	if !rec.ExistenceMatters(e.from, policyDomain) || e.in.Exists == nil {
		return rec.PolicyFor(e.from, policyDomain, true), false, nil
	}
	if ex == nil {
		if e.exists == nil && e.existErr == nil {
			ok, err := e.in.Exists(e.ctx, e.from)
			if err != nil {
				e.existErr = fmt.Errorf("%w: checking existence of %q: %w", ErrTempError, e.from, err)
			} else {
				e.exists = &ok
			}
		}
		ex = e.exists
	}
	return rec.PolicyFor(e.from, policyDomain, ex == nil || *ex), true, nil
}

// chooseRecord picks the record that applies to an Author Domain without
// its own (RFC 9989 Section 4.10.1): the Organizational Domain's, else
// that of a Public Suffix Domain (psd=y) above it. Nil if none.
func chooseRecord(from, org string, entries []walkEntry) *walkEntry {
	for i, en := range entries {
		if en.domain == org && en.domain != from {
			return &entries[i]
		}
	}
	for i, en := range entries {
		if en.psd() == PSDYes && en.domain != from {
			return &entries[i]
		}
	}
	return nil
}

type cachedTXT struct {
	name string
	txts []string
	err  error
}

// cachingResolver remembers the answers of one evaluation. Not safe for
// concurrent use; Evaluate uses it sequentially.
type cachingResolver struct {
	r       Resolver
	answers []cachedTXT // a handful: the names of the tree walks and checks
	records *RecordCache
}

func (c *cachingResolver) parseRecord(txt string) (*Record, error) { return c.records.Parse(txt) }

// PrefetchTXT passes a prefetch on to the resolver when it can take one
// and the answer is not already known.
func (c *cachingResolver) PrefetchTXT(name string) {
	p, ok := c.r.(prefetcher)
	if !ok {
		return
	}
	for _, a := range c.answers {
		if strings.EqualFold(a.name, name) {
			return
		}
	}
	p.PrefetchTXT(name)
}

func (c *cachingResolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	for _, a := range c.answers {
		if strings.EqualFold(a.name, name) {
			return a.txts, a.err
		}
	}
	txts, err := c.r.LookupTXT(ctx, name)
	c.answers = append(c.answers, cachedTXT{name, txts, err})
	return txts, err
}
