package dkim

import (
	"crypto"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Errors of signatures and key records, each a permanent error (RFC 8601
// permerror): asking again gives the same answer.
var (
	errSyntax     = errors.New("dkim: malformed tag list")
	errSignature  = errors.New("dkim: unusable signature")
	errKeyRecord  = errors.New("dkim: unusable key record")
	errAlgorithm  = errors.New("dkim: algorithm not acceptable")
	errKeyTooWeak = errors.New("dkim: RSA key too short (RFC 8301 requires 1024 bits)")
)

// tag is one tag=value of a tag list.
type tag struct{ name, value string }

// tagSet is a parsed tag list, in order: a slice rather than a map, as
// there are a dozen tags at most and a message parses several lists.
type tagSet []tag

// lookup returns the value of tag name and whether it is there.
func (t tagSet) lookup(name string) (string, bool) {
	for _, x := range t {
		if x.name == name {
			return x.value, true
		}
	}
	return "", false
}

// get returns the value of tag name, "" if it is not there.
func (t tagSet) get(name string) string {
	v, _ := t.lookup(name)
	return v
}

// tagList parses a tag=value list (RFC 6376 section 3.2). Values keep their
// inner folding white space; leading and trailing white space is removed. A
// tag that occurs twice, a tag name that is not ALPHA *ALNUMPUNC, a
// tag-spec without "=" or an empty one (";;") makes the whole list
// invalid; only the last may be empty (a trailing ";").
func tagList(s string) (tagSet, error) {
	tags := make(tagSet, 0, strings.Count(s, ";")+1)
	for rest, last := s, false; !last; {
		spec, after, found := strings.Cut(rest, ";")
		rest, last = after, !found
		if trimFWS(spec) == "" {
			if last {
				break
			}
			return nil, fmt.Errorf("%w: empty tag-spec", errSyntax)
		}
		name, value, ok := strings.Cut(spec, "=")
		if !ok {
			return nil, fmt.Errorf("%w: %q has no \"=\"", errSyntax, trimFWS(spec))
		}
		name = trimFWS(name)
		if !isTagName(name) {
			return nil, fmt.Errorf("%w: bad tag name %q", errSyntax, name)
		}
		if _, dup := tags.lookup(name); dup {
			return nil, fmt.Errorf("%w: tag %q occurs twice", errSyntax, name)
		}
		tags = append(tags, tag{name, trimFWS(value)})
	}
	return tags, nil
}

func isTagName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		alpha := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
		if !alpha && (i == 0 || !('0' <= c && c <= '9' || c == '_')) {
			return false
		}
	}
	return s != ""
}

func isFWS(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

func trimFWS(s string) string {
	i, j := 0, len(s)
	for i < j && isFWS(s[i]) {
		i++
	}
	for j > i && isFWS(s[j-1]) {
		j--
	}
	return s[i:j]
}

// stripFWS removes all folding white space, which RFC 6376 section 3.2
// allows anywhere in base64 and most other tag values.
func stripFWS(s string) string {
	if !strings.ContainsAny(s, " \t\r\n") {
		return s
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if !isFWS(s[i]) {
			b = append(b, s[i])
		}
	}
	return string(b)
}

// prefixWithoutFWS returns the first n characters of s that are not
// folding white space.
func prefixWithoutFWS(s string, n int) string {
	if k := min(n, len(s)); !strings.ContainsAny(s[:k], " \t\r\n") {
		return s[:k]
	}
	b := make([]byte, 0, n)
	for i := 0; i < len(s) && len(b) < n; i++ {
		if !isFWS(s[i]) {
			b = append(b, s[i])
		}
	}
	return string(b)
}

// base64Value decodes a base64 tag value with folding white space.
func base64Value(s string) ([]byte, error) {
	var stack [1024]byte // a 4096-bit signature fits; no garbage for the copy
	buf := stack[:0]
	for i := 0; i < len(s); i++ {
		if !isFWS(s[i]) {
			buf = append(buf, s[i])
		}
	}
	out := make([]byte, base64.StdEncoding.DecodedLen(len(buf)))
	n, err := base64.StdEncoding.Decode(out, buf)
	return out[:n], err
}

// canon is a canonicalization algorithm (RFC 6376 section 3.4).
type canon byte

const (
	canonSimple canon = iota
	canonRelaxed
)

// signature is a parsed DKIM-Signature field (RFC 6376 section 3.5).
type signature struct {
	// Reported in Result whether or not the signature parses.
	domain, selector, identifier, algorithm, bprefix string
	// err is why the signature cannot be verified (permerror).
	err error

	keyType     string // "rsa" or "ed25519"
	hash        crypto.Hash
	b, bh       []byte
	headerCanon canon
	bodyCanon   canon
	headers     []string // h=, lower-case
	length      int64    // l=, -1 if absent
	expires     time.Time
	auidDomain  string // the domain part of i= (the AUID), lower-case
	headerHash  []byte // the hash of the canonicalized header (RFC 6376 section 3.7)
	body        *bodyHash
	keyName     string    // <s>._domainkey.<d>
	weak        bool      // accept rsa-sha1 and short RSA keys (tests only)
	cv          ARCStatus // an ARC-Seal's cv=
}

// parseSignature parses the value of a DKIM-Signature field. Whatever is
// wrong is in sig.err; the reported tags (d, s, i, a, b) are filled in as
// far as they can be read even then, for Authentication-Results.
func parseSignature(value string, now time.Time, weak bool) *signature {
	sig := &signature{length: -1}
	tags, err := tagList(value)
	if err != nil {
		// Read what can be read for the report, leniently.
		lenientTags(sig, value)
		sig.err = err
		return sig
	}
	sig.domain = stripFWS(tags.get("d"))
	sig.selector = stripFWS(tags.get("s"))
	sig.algorithm = stripFWS(tags.get("a"))
	sig.bprefix = prefixWithoutFWS(tags.get("b"), 8)
	sig.identifier = "@" + sig.domain
	sig.err = sig.parse(tags, now, weak)
	return sig
}

// lenientTags fills the reported tags from a value whose tag list is
// invalid.
func lenientTags(sig *signature, value string) {
	for spec := range strings.SplitSeq(value, ";") {
		name, val, ok := strings.Cut(spec, "=")
		if !ok {
			continue
		}
		val = stripFWS(val)
		switch trimFWS(name) {
		case "d":
			sig.domain = val
		case "s":
			sig.selector = val
		case "a":
			sig.algorithm = val
		case "b":
			sig.bprefix = val[:min(8, len(val))]
		case "i":
			sig.identifier = val
		}
	}
	if sig.identifier == "" {
		sig.identifier = "@" + sig.domain
	}
}

// parse checks the tags of RFC 6376 section 3.5.
func (sig *signature) parse(tags tagSet, now time.Time, weak bool) error {
	for _, t := range []string{"v", "a", "b", "bh", "d", "h", "s"} {
		if _, ok := tags.lookup(t); !ok && !(t == "v" && weak) {
			return fmt.Errorf("%w: missing required tag %s=", errSignature, t)
		}
	}
	// weak (tests only) also takes the drafts before RFC 4871: no v=, or
	// v=0.5, and q=dns.
	if v := tags.get("v"); v != "1" && !(weak && (v == "" || v == "0.5")) {
		return fmt.Errorf("%w: v=%s, want 1", errSignature, v)
	}

	switch strings.ToLower(sig.algorithm) {
	case "rsa-sha256":
		sig.keyType, sig.hash = "rsa", crypto.SHA256
	case "ed25519-sha256": // RFC 8463
		sig.keyType, sig.hash = "ed25519", crypto.SHA256
	case "rsa-sha1":
		// RFC 8301 section 3.1: rsa-sha1 MUST NOT be used for signing or
		// verifying.
		if !weak {
			return fmt.Errorf("%w: rsa-sha1 (RFC 8301)", errAlgorithm)
		}
		sig.keyType, sig.hash = "rsa", crypto.SHA1
	default:
		return fmt.Errorf("%w: unknown algorithm %q", errAlgorithm, sig.algorithm)
	}
	sig.weak = weak

	var err error
	if sig.b, err = base64Value(tags.get("b")); err != nil || len(sig.b) == 0 {
		return fmt.Errorf("%w: bad b= value", errSignature)
	}
	if sig.bh, err = base64Value(tags.get("bh")); err != nil || len(sig.bh) == 0 {
		return fmt.Errorf("%w: bad bh= value", errSignature)
	}

	if err := sig.parseC(tags); err != nil {
		return err
	}

	if !validDomain(sig.domain) {
		return fmt.Errorf("%w: bad d= domain %q", errSignature, sig.domain)
	}
	if !validSelector(sig.selector) {
		return fmt.Errorf("%w: bad s= selector %q", errSignature, sig.selector)
	}
	sig.keyName = sig.selector + "._domainkey." + sig.domain

	sig.headers = make([]string, 0, strings.Count(tags.get("h"), ":")+1)
	for h := range strings.SplitSeq(tags.get("h"), ":") {
		h = trimFWS(h)
		if h == "" {
			return fmt.Errorf("%w: empty name in h=", errSignature)
		}
		sig.headers = append(sig.headers, lowerName(h))
	}
	// RFC 6376 section 5.4: the From field MUST be signed.
	if !containsFold(sig.headers, "from") {
		return fmt.Errorf("%w: h= does not include From", errSignature)
	}

	// i= is dkim-quoted-printable (section 3.5, 2.11), and its domain must
	// be d= or a subdomain of it; domain names compare case-insensitively.
	if i, ok := tags.lookup("i"); ok {
		auid, err := decodeQP(i)
		if err != nil {
			return fmt.Errorf("%w: i=: %v", errSignature, err)
		}
		at := strings.LastIndexByte(auid, '@')
		if at < 0 {
			return fmt.Errorf("%w: i=%s has no \"@\"", errSignature, auid)
		}
		sig.identifier = auid
		sig.auidDomain = strings.ToLower(auid[at+1:])
		d := strings.ToLower(sig.domain)
		if sig.auidDomain != d && !strings.HasSuffix(sig.auidDomain, "."+d) {
			return fmt.Errorf("%w: i= domain %q is not d=%s or below it", errSignature, sig.auidDomain, sig.domain)
		}
	} else {
		sig.auidDomain = strings.ToLower(sig.domain)
	}

	if l, ok := tags.lookup("l"); ok {
		l = stripFWS(l)
		n, err := strconv.ParseInt(l, 10, 64)
		if err != nil || n < 0 || len(l) > 76 || !allDigits(l) {
			return fmt.Errorf("%w: bad l=%s", errSignature, l)
		}
		sig.length = n
	}
	if q, ok := tags.lookup("q"); ok {
		found := false
		for m := range strings.SplitSeq(stripFWS(q), ":") {
			found = found || strings.EqualFold(m, "dns/txt") || weak && m == "dns"
		}
		if !found {
			return fmt.Errorf("%w: unknown query method q=%s", errSignature, q)
		}
	}

	var signed, expires int64 = -1, -1
	if t, ok := tags.lookup("t"); ok {
		if signed, err = timestamp(t); err != nil {
			return fmt.Errorf("%w: bad t=%s", errSignature, t)
		}
	}
	if x, ok := tags.lookup("x"); ok {
		if expires, err = timestamp(x); err != nil {
			return fmt.Errorf("%w: bad x=%s", errSignature, x)
		}
		// Section 3.5: x= MUST be greater than t= when both are present.
		if signed >= 0 && expires <= signed {
			return fmt.Errorf("%w: x=%d is not after t=%d", errSignature, expires, signed)
		}
		sig.expires = time.Unix(expires, 0)
		if now.After(sig.expires) {
			return ErrExpired
		}
	}
	return nil
}

// parseC reads the c= tag (RFC 6376 section 3.5): header/body
// canonicalization, simple when a part is absent; without c=, the
// signature's fields stay as they are.
func (sig *signature) parseC(tags tagSet) error {
	c, ok := tags.lookup("c")
	if !ok {
		return nil
	}
	hc, bc, _ := strings.Cut(stripFWS(c), "/")
	var okH, okB bool
	sig.headerCanon, okH = parseCanon(hc)
	sig.bodyCanon, okB = parseCanon(bc)
	if bc == "" {
		sig.bodyCanon, okB = canonSimple, true
	}
	if !okH || !okB {
		return fmt.Errorf("%w: unknown canonicalization c=%s", errSignature, c)
	}
	return nil
}

func parseCanon(s string) (canon, bool) {
	switch strings.ToLower(s) {
	case "", "simple":
		return canonSimple, s != ""
	case "relaxed":
		return canonRelaxed, true
	}
	return 0, false
}

func timestamp(s string) (int64, error) {
	s = stripFWS(s)
	if s == "" || len(s) > 12 || !allDigits(s) {
		return 0, errors.New("not a timestamp")
	}
	return strconv.ParseInt(s, 10, 64)
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func containsFold(list []string, s string) bool {
	for _, v := range list {
		if strings.EqualFold(v, s) {
			return true
		}
	}
	return false
}

// validDomain checks a d= value: labels of letters, digits, "-" and "_"
// (RFC 6376 section 3.5 domain-name, from RFC 5321), none empty.
func validDomain(d string) bool {
	if d == "" || len(d) > 253 {
		return false
	}
	for l := range strings.SplitSeq(d, ".") {
		if l == "" || len(l) > 63 {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// validSelector checks an s= value: dot-separated sub-domains.
func validSelector(s string) bool { return validDomain(s) }

// decodeQP decodes dkim-quoted-printable (RFC 6376 section 2.11): "=XX" is
// the octet XX; folding white space is removed.
func decodeQP(s string) (string, error) {
	s = stripFWS(s)
	if !strings.Contains(s, "=") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '=' {
			b.WriteByte(c)
			continue
		}
		if i+2 >= len(s) {
			return "", errors.New("truncated quoted-printable escape")
		}
		v, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
		if err != nil || !isHex(s[i+1]) || !isHex(s[i+2]) {
			return "", fmt.Errorf("bad quoted-printable escape %q", s[i:i+3])
		}
		b.WriteByte(byte(v))
		i += 2
	}
	return b.String(), nil
}

// isHex: RFC 2045 hex-octet uses upper-case digits; lower case is accepted
// too, as RFC 2045 section 6.7 asks of decoders.
func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'A' <= c && c <= 'F' || 'a' <= c && c <= 'f'
}
