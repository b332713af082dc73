// Package dmarc implements DMARC as specified in RFC 9989 (the successor of
// RFC 7489, known while in draft as "DMARCbis"): parsing of DMARC Policy
// Records (Section 4.7), policy discovery with the DNS Tree Walk
// (Section 4.10, 4.10.1), Organizational Domain determination
// (Section 4.10.2), Identifier Alignment (Section 4.4) and evaluation of a
// message (Section 5.3), plus extraction of the Author Domain from the
// RFC5322.From header field (Section 5.3.1).
//
// The Organizational Domain is found with the DNS Tree Walk, honouring "psd"
// tags published by Public Suffix Operators; no public suffix list is used.
//
// Reporting (RFC 9990, RFC 9991) is not part of this package; the parsed
// Record carries the reporting URIs and options for whoever sends reports.
package dmarc

import (
	"errors"
	"fmt"
	"strings"
)

// Policy is a Domain Owner Assessment Policy (RFC 9989 Section 4.7, tags
// "p", "sp" and "np").
type Policy string

// Policies.
const (
	PolicyNone       Policy = "none"
	PolicyQuarantine Policy = "quarantine"
	PolicyReject     Policy = "reject"
)

// downgrade returns the next less strict policy, as applied in testing mode
// ("t=y", RFC 9989 Section 4.7): reject becomes quarantine, quarantine
// becomes none, none stays none.
func (p Policy) downgrade() Policy {
	switch p {
	case PolicyReject:
		return PolicyQuarantine
	case PolicyQuarantine:
		return PolicyNone
	}
	return p
}

// Align is an Identifier Alignment mode (tags "adkim" and "aspf").
type Align byte

// Alignment modes.
const (
	AlignRelaxed Align = 'r'
	AlignStrict  Align = 's'
)

// PSD is the "psd" tag (RFC 9989 Section 4.7): whether the domain
// publishing the record is a Public Suffix Domain.
type PSD byte

// PSD values.
const (
	PSDYes     PSD = 'y' // a Public Suffix Domain
	PSDNo      PSD = 'n' // not one: the Organizational Domain (stops the tree walk)
	PSDUnknown PSD = 'u' // the default
)

// FailureOptions is the "fo" tag (RFC 9989 Section 4.7): the set of
// failures a failure report is wanted for. A record without it asks for
// FailureAll.
type FailureOptions uint8

// Failure reporting options.
const (
	FailureAll  FailureOptions = 1 << iota // "0": no mechanism produced an aligned pass
	FailureAny                             // "1": some mechanism did not produce an aligned pass
	FailureDKIM                            // "d": a DKIM signature failed evaluation, aligned or not
	FailureSPF                             // "s": SPF failed evaluation, aligned or not
)

var failureOptionNames = [...]struct {
	o    FailureOptions
	name string
}{{FailureAll, "0"}, {FailureAny, "1"}, {FailureDKIM, "d"}, {FailureSPF, "s"}}

// Has reports whether every option of o is in fo.
func (fo FailureOptions) Has(o FailureOptions) bool { return fo&o == o && o != 0 }

// String returns the options as a tag value, "0:1:d:s" order.
func (fo FailureOptions) String() string {
	var names []string
	for _, n := range failureOptionNames {
		if fo.Has(n.o) {
			names = append(names, n.name)
		}
	}
	return strings.Join(names, ":")
}

// URI is a reporting URI from the "rua" or "ruf" tag.
type URI struct {
	// Address is the URI as published, without the obsolete size suffix,
	// e.g. "mailto:dmarc@example.com". Any syntactically valid URI is kept
	// (RFC 9989 Section 4.7: URIs with unsupported schemes are ignored by the
	// report sender, not by the parser).
	Address string
	// MaxSize is the obsolete "!size" limit in bytes (RFC 7489; RFC 9989
	// Section 4.8 obs-dmarc-report-size, to be ignored by reporters); 0 if
	// absent.
	MaxSize uint64
}

// Record is a parsed DMARC Policy Record.
type Record struct {
	// Policy is the "p" tag. It is PolicyNone when "p" is absent (RFC 9989
	// Section 4.7) or when "p", "sp" or "np" is invalid but a valid "rua" URI
	// is present (Section 4.10.1).
	Policy Policy
	// SubdomainPolicy is the "sp" tag, "" if absent.
	SubdomainPolicy Policy
	// NonexistentPolicy is the "np" tag, "" if absent.
	NonexistentPolicy Policy
	// PSD is the "psd" tag, PSDUnknown by default.
	PSD PSD
	// Testing is true for "t=y". Without a "t" tag, the legacy "pct=0" also
	// sets it (RFC 9989 Appendix A.6: t=y and t=n are analogous to pct=0 and
	// pct=100).
	Testing bool
	// ADKIM and ASPF are the alignment modes, relaxed by default.
	ADKIM, ASPF Align
	// RUA and RUF are the reporting URIs. URIs that are not syntactically
	// valid are left out (and noted in Warnings).
	RUA, RUF []URI
	// FailureOptions is the "fo" tag, FailureAll by default.
	FailureOptions FailureOptions
	// Pct is the legacy RFC 7489 "pct" tag (0-100), -1 if absent or invalid.
	// RFC 9989 removed it; it only feeds Testing.
	Pct int
	// Warnings lists the parts of the record that were ignored or replaced
	// by defaults (RFC 9989 Section 4.8: syntax errors in the remainder of
	// the record are discarded). For logging only.
	Warnings []string
}

// PolicyFor returns the policy this record, found at policyDomain, applies
// to mail from authorDomain (both normalized), RFC 9989 Section 4.10.1:
// "p" when the record is the Author Domain's own; for a subdomain, "sp" if
// the Author Domain exists and "np" if it does not, each falling back as
// Section 4.7 says. Evaluate and "dmarc-milter check" both use it.
func (r *Record) PolicyFor(authorDomain, policyDomain string, exists bool) Policy {
	switch {
	case authorDomain == policyDomain:
		return r.Policy
	case exists:
		return r.subdomainPolicy()
	}
	return r.nonexistentPolicy()
}

// ExistenceMatters reports whether PolicyFor depends on whether
// authorDomain exists: only for a subdomain whose sp and np differ.
func (r *Record) ExistenceMatters(authorDomain, policyDomain string) bool {
	return authorDomain != policyDomain && r.subdomainPolicy() != r.nonexistentPolicy()
}

// subdomainPolicy is the policy for existing subdomains: "sp", else "p"
// (RFC 9989 Section 4.7, "sp").
func (r *Record) subdomainPolicy() Policy {
	if r.SubdomainPolicy != "" {
		return r.SubdomainPolicy
	}
	return r.Policy
}

// nonexistentPolicy is the policy for non-existent subdomains: "np", else
// "sp", else "p" (RFC 9989 Section 4.7, "np").
func (r *Record) nonexistentPolicy() Policy {
	if r.NonexistentPolicy != "" {
		return r.NonexistentPolicy
	}
	return r.subdomainPolicy()
}

var (
	// ErrNotDMARC means a TXT record is not a DMARC record: it does not start
	// with "v=DMARC1". Such records are ignored during discovery (RFC 9989
	// Section 4.10 step 2).
	ErrNotDMARC = errors.New("dmarc: not a DMARC record")

	// ErrNoRecord means no DMARC Policy Record applies to the domain; DMARC
	// does not apply (RFC 9989 Section 4.10.1).
	ErrNoRecord = errors.New("dmarc: no DMARC policy record")

	// ErrTempError marks temporary failures, in practice DNS errors other
	// than "no such record". Test with errors.Is or IsTemporary.
	ErrTempError = errors.New("dmarc: temporary error")

	// ErrNoPolicy means a DMARC Policy Record has no valid "p" tag (or an
	// invalid "sp" or "np") and no syntactically valid "rua" URI: the Mail
	// Receiver applies no DMARC processing to the message (RFC 9989
	// Section 4.10.1), and the result is none, not permerror.
	ErrNoPolicy = errors.New("dmarc: no valid policy and no valid rua: no DMARC processing")

	// ErrInvalidDomain means a domain name is not usable for DMARC.
	ErrInvalidDomain = errors.New("dmarc: invalid domain")
)

// IsTemporary reports whether err is a temporary error (wraps ErrTempError),
// for which a DMARC result of "temperror" is appropriate.
func IsTemporary(err error) bool {
	return errors.Is(err, ErrTempError)
}

// SyntaxError is returned by ParseRecord for a record that is a DMARC record
// (starts with "v=DMARC1") but cannot be used.
type SyntaxError struct {
	Record string // The record text.
	Msg    string // What is wrong.
	// Err is ErrNoPolicy for a record that asks for no DMARC processing
	// (RFC 9989 Section 4.10.1), nil for a malformed one.
	Err error
}

// Unwrap returns e.Err.
func (e *SyntaxError) Unwrap() error { return e.Err }

func (e *SyntaxError) Error() string {
	return fmt.Sprintf("dmarc: malformed record: %s (record %q)", e.Msg, e.Record)
}
