package dmarc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"golang.org/x/net/idna"
)

// Resolver looks up DNS TXT records. *net.Resolver implements it.
//
// Names are passed fully qualified, with a trailing dot. Errors should be
// *net.DNSError: IsNotFound (NXDOMAIN or NODATA) means there is no record;
// any other error is treated as temporary.
//
// A Resolver that also has a method PrefetchTXT(name string), which starts
// a lookup without waiting for it (the daemon's resolver.Resolver), gets
// the names of a tree walk asked for together: they do not depend on each
// other's answers.
type Resolver interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
}

// prefetcher is a Resolver that can start lookups without waiting.
type prefetcher interface {
	PrefetchTXT(name string)
}

// maxTreeWalkQueries is the query limit of the DNS Tree Walk (RFC 9989
// Section 4.10): the starting name, then at most 7 labels.
const maxTreeWalkQueries = 8

// Discovery is the result of DMARC policy discovery.
type Discovery struct {
	// Record is the DMARC Policy Record that applies; nil if none was found
	// or if the record found is malformed.
	Record *Record
	// Domain is the DMARC Policy Domain: where the record was found. Set
	// also when the record there is malformed.
	Domain string
	// OrgDomain is the Organizational Domain of the Author Domain (RFC 9989
	// Section 4.10.2).
	OrgDomain string
	// Queries is the number of DNS lookups made for the tree walk.
	Queries int
}

// walkEntry is a name at which exactly one DMARC record was found during a
// tree walk, or (failed set) whose lookup failed.
type walkEntry struct {
	domain string
	rec    *Record // nil if the record is malformed
	err    error   // the *SyntaxError for a malformed record
	failed error   // the lookup failed temporarily: nothing is known

	// unknown: a failed name supposed to hold a record with psd hypoPSD
	// (Evaluate weighs what a failed lookup could have returned).
	unknown bool
	hypoPSD PSD
}

// psd is the record's "psd" tag; PSDUnknown for a malformed record.
func (e walkEntry) psd() PSD {
	switch {
	case e.unknown:
		return e.hypoPSD
	case e.rec == nil:
		return PSDUnknown
	}
	return e.rec.PSD
}

// treeWalk performs the DNS Tree Walk of RFC 9989 Section 4.10 from domain
// (normalized, see NormalizeDomain). It queries the domain itself, then the
// name of at most 7 labels below it (skipping the labels in between), then
// each parent up to the top-level domain, so at most 8 queries. It stops
// early at a name with exactly one DMARC record carrying psd=y or psd=n.
//
// The names do not depend on each other's answers: with a prefetcher
// they are all asked for at the start, and then read in order, so that a
// name server that is slow or does not answer costs the walk one wait, not
// one per name. (The walk can stop early, at a psd=y or psd=n record; the
// names after it were then asked for in vain, at most a few queries.)
//
// It returns the names with exactly one DMARC record, longest first. TXT
// records that are not DMARC records are ignored and names with more than
// one DMARC record are skipped (Section 4.10 step 2). A DNS error other
// than "not found" ends the walk with an error wrapping ErrTempError,
// unless keepGoing: the name is then returned as an entry with failed set,
// and the walk goes on.
func treeWalk(ctx context.Context, r Resolver, domain string, keepGoing bool) (entries []walkEntry, queries int, err error) {
	labels := strings.Split(domain, ".")
	targets := []string{domain}
	// Steps 3-4 and 7: drop to at most 7 labels, then one label at a time.
	for n := min(len(labels)-1, maxTreeWalkQueries-1); n >= 1; n-- {
		targets = append(targets, strings.Join(labels[len(labels)-n:], "."))
	}
	if p, ok := r.(prefetcher); ok {
		for _, target := range targets[1:] {
			p.PrefetchTXT("_dmarc." + target + ".")
		}
	}
	for _, target := range targets {
		queries++
		e, found, err := lookupRecord(ctx, r, target)
		if err != nil {
			if !keepGoing {
				return entries, queries, err
			}
			entries = append(entries, walkEntry{domain: target, failed: err})
			continue
		}
		if !found {
			continue
		}
		entries = append(entries, e)
		if p := e.psd(); p == PSDYes || p == PSDNo {
			break
		}
	}
	return entries, queries, nil
}

// lookupRecord queries _dmarc.<domain> and returns the single DMARC record
// there, if exactly one exists.
func lookupRecord(ctx context.Context, r Resolver, domain string) (walkEntry, bool, error) {
	name := "_dmarc." + domain + "."
	txts, err := r.LookupTXT(ctx, name)
	if err != nil {
		var dnsErr *net.DNSError
		if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
			return walkEntry{}, false, nil
		}
		return walkEntry{}, false, fmt.Errorf("%w: looking up TXT %s: %w", ErrTempError, name, err)
	}
	parse := ParseRecord
	if p, ok := r.(interface {
		parseRecord(string) (*Record, error)
	}); ok {
		parse = p.parseRecord
	}
	var e walkEntry
	n := 0
	for _, txt := range txts {
		rec, err := parse(txt)
		if errors.Is(err, ErrNotDMARC) {
			continue
		}
		n++
		e = walkEntry{domain: domain, rec: rec, err: err}
	}
	// Several DMARC records at one name are all discarded.
	return e, n == 1, nil
}

// selectOrgDomain picks the Organizational Domain of start from the records
// of its tree walk (RFC 9989 Section 4.10.2), going from the longest name
// to the shortest:
//  1. a record with psd=n: that name;
//  2. a record with psd=y, other than at start: the name one label below it;
//  3. otherwise the name with the fewest labels that has a record.
//
// Without any record, start is its own Organizational Domain. A malformed
// record counts as a record without a psd tag.
func selectOrgDomain(start string, entries []walkEntry) string {
	for _, e := range entries {
		switch e.psd() {
		case PSDNo:
			return e.domain
		case PSDYes:
			if e.domain != start {
				return childOf(start, e.domain)
			}
		}
	}
	if len(entries) > 0 {
		return entries[len(entries)-1].domain
	}
	return start
}

// childOf returns the name one label below parent on the way to domain,
// which must be a subdomain of parent.
func childOf(domain, parent string) string {
	labels := strings.Split(domain, ".")
	n := strings.Count(parent, ".") + 2
	return strings.Join(labels[len(labels)-n:], ".")
}

// Discover finds the DMARC Policy Record for fromDomain, the Author Domain
// (RFC 9989 Section 4.10.1), and its Organizational Domain (Section
// 4.10.2), with one DNS Tree Walk of at most 8 queries.
//
// The record applied is, in order of preference, the one at the Author
// Domain, at its Organizational Domain, or at its Public Suffix Domain (a
// record with psd=y found by the walk).
//
// Errors: ErrNoRecord if no record applies (DMARC does not apply), an error
// wrapping ErrTempError for DNS failures, a *SyntaxError if the record that
// applies is malformed (Discovery.Domain then says where), one wrapping
// ErrNoPolicy, with Record set, for a record that asks for no DMARC
// processing (RFC 9989 Section 4.10.1), and
// ErrInvalidDomain for an unusable domain name.
func Discover(ctx context.Context, r Resolver, fromDomain string) (Discovery, error) {
	domain, err := NormalizeDomain(fromDomain)
	if err != nil {
		return Discovery{}, err
	}
	entries, queries, err := treeWalk(ctx, r, domain, false)
	d := Discovery{Queries: queries}
	if err != nil {
		return d, err
	}
	d.OrgDomain = selectOrgDomain(domain, entries)

	var chosen *walkEntry
	for i, e := range entries {
		if e.domain == domain {
			chosen = &entries[i] // The Author Domain's own record.
			break
		}
	}
	if chosen == nil {
		for i, e := range entries {
			if e.domain == d.OrgDomain {
				chosen = &entries[i]
				break
			}
		}
	}
	if chosen == nil {
		// The Public Suffix Domain's record; PSD policy is not used when the
		// Organizational Domain publishes a record (checked above).
		for i, e := range entries {
			if e.psd() == PSDYes && e.domain != domain {
				chosen = &entries[i]
				break
			}
		}
	}
	if chosen == nil {
		return d, ErrNoRecord
	}
	d.Domain = chosen.domain
	// A record that asks for no DMARC processing (ErrNoPolicy) is still a
	// record found: Record is set with the error.
	d.Record = chosen.rec
	return d, chosen.err
}

// OrganizationalDomain returns the Organizational Domain of domain as
// determined by the DNS Tree Walk (RFC 9989 Section 4.10.2), honouring psd=y
// and psd=n. If no DMARC record is found, domain itself is returned. The
// domain is returned normalized (lower-case A-labels, no trailing dot).
func OrganizationalDomain(ctx context.Context, r Resolver, domain string) (string, error) {
	d, err := NormalizeDomain(domain)
	if err != nil {
		return "", err
	}
	entries, _, err := treeWalk(ctx, r, d, false)
	if err != nil {
		return "", err
	}
	return selectOrgDomain(d, entries), nil
}

// NormalizeDomain lower-cases a domain name, removes a trailing dot and
// converts U-labels to A-labels (RFC 9989 Section 5.3.1), so that names
// compare case-insensitively (Section 4.4).
func NormalizeDomain(s string) (string, error) {
	d := strings.TrimSuffix(s, ".")
	if d == "" {
		return "", fmt.Errorf("%w: empty domain", ErrInvalidDomain)
	}
	if a, ok := plainDomain(d); ok {
		return a, nil
	}
	return normalizeIDNA(s, d)
}

// normalizeIDNA is NormalizeDomain's general path: d (s without its
// trailing dot) through UTS #46 lookup processing.
func normalizeIDNA(s, d string) (string, error) {
	a, err := idna.Lookup.ToASCII(d)
	if err != nil {
		return "", fmt.Errorf("%w: %q: %v", ErrInvalidDomain, s, err)
	}
	a = strings.ToLower(a)
	for l := range strings.SplitSeq(a, ".") {
		if l == "" || len(l) > 63 {
			return "", fmt.Errorf("%w: %q: bad label", ErrInvalidDomain, s)
		}
	}
	if len(a) > 253 {
		return "", fmt.Errorf("%w: %q: too long", ErrInvalidDomain, s)
	}
	return a, nil
}

// plainDomain is NormalizeDomain's short path for the names nearly all mail
// carries: letters, digits and hyphens in labels of 1 to 63 octets, none
// starting or ending with a hyphen or with hyphens in its third and fourth
// positions (which would make it an A-label, "xn--", to decode and check),
// at most 253 octets. For such a name idna.Lookup only lower-cases (UTS #46
// maps A-Z to a-z; RFC 5891 Section 4.2.3.1's hyphen rules are the ones
// checked here), so the answer is the same without its per-rune mapping;
// FuzzNormalizeDomain checks that. d is returned as it is when already
// lower-case.
func plainDomain(d string) (string, bool) {
	if len(d) > 253 {
		return "", false
	}
	upper := false
	start := 0
	for i := 0; i <= len(d); i++ {
		if i == len(d) || d[i] == '.' {
			n := i - start
			if n == 0 || n > 63 || d[start] == '-' || d[i-1] == '-' ||
				n >= 4 && d[start+2] == '-' && d[start+3] == '-' {
				return "", false
			}
			start = i + 1
			continue
		}
		switch c := d[i]; {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-':
		case 'A' <= c && c <= 'Z':
			upper = true
		default:
			return "", false
		}
	}
	if upper {
		return strings.ToLower(d), true
	}
	return d, true
}
