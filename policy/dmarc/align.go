package dmarc

import "strings"

// Aligned reports whether the identifier id (the domain SPF authenticated,
// or a DKIM signature's d=) is aligned with the Author Domain from in mode
// (RFC 9989 Section 4.4): in either mode when the names are identical; in
// relaxed mode also when both have the same Organizational Domain. Both
// names must be normalized (lower case, no trailing dot).
//
// orgDomain returns a name's Organizational Domain (Section 4.10.2), "" if
// it cannot be determined (then only identical names align). It is asked
// only when relaxed alignment could hold: the names share a parent, and
// then for id only if it is the Author Domain's Organizational Domain or
// below it.
func Aligned(id, from string, mode Align, orgDomain func(name string) string) bool {
	if id == "" || from == "" {
		return false
	}
	if id == from {
		return true
	}
	if mode == AlignStrict || !shareParent(id, from) {
		return false
	}
	org := orgDomain(from)
	// An Organizational Domain is the name itself or a parent of it, so
	// the identifier can only share org if it is org or below it.
	if org == "" || id != org && !strings.HasSuffix(id, "."+org) {
		return false
	}
	return orgDomain(id) == org
}

// shareParent reports whether two distinct names have a common parent
// other than the root, the least they need to share an Organizational
// Domain.
func shareParent(a, b string) bool {
	return a[strings.LastIndexByte(a, '.')+1:] == b[strings.LastIndexByte(b, '.')+1:]
}
