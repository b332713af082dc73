package dmarc

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
)

// Tags known to RFC 9989 (Section 9.3), including the historic RFC 7489 tags
// pct, rf and ri. A known tag may appear only once.
var knownTags = map[string]bool{
	"v": true, "p": true, "sp": true, "np": true, "psd": true, "t": true,
	"adkim": true, "aspf": true, "rua": true, "ruf": true, "fo": true,
	"pct": true, "rf": true, "ri": true,
}

// ParseRecord parses the text of a DMARC Policy Record (the character-strings
// of one TXT record, concatenated; RFC 9989 Section 4.5).
//
// It returns ErrNotDMARC if the text does not start with the "v=DMARC1" tag
// (RFC 9989 Section 4.7: such records MUST be ignored) and a *SyntaxError
// if it is a DMARC record that cannot be used.
//
// The rules, from RFC 9989 Sections 4.7, 4.8 and 4.10.1:
//   - "v" must be the first tag; its name is case-insensitive (ABNF), its
//     value "DMARC1" case-sensitive.
//   - Tag names and the values of p, sp, np, psd, t, adkim, aspf and fo are
//     case-insensitive; whitespace around tags, "=" and ";" is allowed.
//   - Unknown tags are ignored. The removed tags rf and ri are ignored; pct
//     is kept as Pct when valid and otherwise ignored.
//   - Syntax errors in the remainder of the record are discarded in favour
//     of the defaults (Section 4.8); they are listed in Record.Warnings.
//   - Section 4.10.1: a record without a valid "p", or with an invalid
//     "sp" or "np", is taken as exactly "p=none" (no sp, no np) when "rua"
//     holds at least one syntactically valid URI; without one the Mail
//     Receiver applies no DMARC processing: ParseRecord then returns the
//     record (its psd tag still counts in the tree walk) together with a
//     *SyntaxError wrapping ErrNoPolicy, and the message's result is none.
//   - A known tag that appears twice makes the record unusable: DMARC uses
//     the DKIM tag-list syntax (Section 4.7), and RFC 6376 Section 3.2 makes
//     a tag-list with duplicate tags invalid.
func ParseRecord(txt string) (*Record, error) {
	if !IsRecord(txt) {
		return nil, ErrNotDMARC
	}
	parts := strings.Split(txt, ";")

	r := &Record{
		PSD:            'u',
		ADKIM:          AlignRelaxed,
		ASPF:           AlignRelaxed,
		FailureOptions: FailureAll,
		Pct:            -1,
	}
	warn := func(format string, args ...any) {
		r.Warnings = append(r.Warnings, fmt.Sprintf(format, args...))
	}
	syntaxErr := func(format string, args ...any) (*Record, error) {
		return nil, &SyntaxError{Record: txt, Msg: fmt.Sprintf(format, args...)}
	}

	seen := map[string]bool{"v": true}
	var (
		pSeen, tSeen, testing bool
		badPolicy             []string // p, sp or np present with an invalid value
		policy, sp, np        Policy
		pctValue              int
		hasPct, foPresent     bool
		foValue               string
	)
	for i, part := range parts[1:] {
		part = trimWSP(part)
		if part == "" {
			// Only the final separator is allowed by the ABNF; tolerate
			// empty tags elsewhere as a discarded syntax error.
			if i != len(parts)-2 {
				warn("empty tag ignored")
			}
			continue
		}
		rawName, rawValue, hasEq := strings.Cut(part, "=")
		name := strings.ToLower(trimWSP(rawName))
		value := trimWSP(rawValue)
		if !isAlpha(name) {
			warn("malformed tag %q ignored", part)
			continue
		}
		if knownTags[name] {
			if seen[name] {
				return syntaxErr("duplicate tag %q", name)
			}
			seen[name] = true
		}
		valid := hasEq && value != "" && isDMARCValue(value)
		lvalue := strings.ToLower(value)

		switch name {
		case "v":
			// Handled above; a second v is a duplicate.
		case "p", "sp", "np":
			if name == "p" {
				pSeen = true
			}
			pol, ok := parsePolicy(lvalue)
			if !valid || !ok {
				badPolicy = append(badPolicy, name)
				continue
			}
			switch name {
			case "p":
				policy = pol
			case "sp":
				sp = pol
			case "np":
				np = pol
			}
		case "psd":
			if valid && (lvalue == "y" || lvalue == "n" || lvalue == "u") {
				r.PSD = PSD(lvalue[0])
			} else {
				warn("invalid psd value %q ignored", value)
			}
		case "t":
			if valid && (lvalue == "y" || lvalue == "n") {
				tSeen = true
				testing = lvalue == "y"
			} else {
				warn("invalid t value %q ignored", value)
			}
		case "adkim", "aspf":
			if !valid || (lvalue != "r" && lvalue != "s") {
				warn("invalid %s value %q ignored", name, value)
				continue
			}
			if name == "adkim" {
				r.ADKIM = Align(lvalue[0])
			} else {
				r.ASPF = Align(lvalue[0])
			}
		case "rua", "ruf":
			if !valid {
				warn("invalid %s value %q ignored", name, value)
				continue
			}
			uris := parseURIList(value, func(s string) { warn("invalid %s URI %q ignored", name, s) })
			if name == "rua" {
				r.RUA = uris
			} else {
				r.RUF = uris
			}
		case "fo":
			foValue, foPresent = lvalue, valid
			if !valid {
				warn("invalid fo value %q ignored", value)
			}
		case "pct":
			// Removed by RFC 9989 (Appendix A.6); RFC 7489 allowed 0-100.
			n, err := strconv.Atoi(value)
			if valid && err == nil && n >= 0 && n <= 100 && isDigits(value) {
				pctValue, hasPct = n, true
			} else {
				warn("invalid pct value %q ignored", value)
			}
		case "rf", "ri":
			// Removed by RFC 9989 (Section C.5.2); not used.
		default:
			// Unknown tags MUST be ignored (Section 4.7).
			if !valid {
				warn("malformed tag %q ignored", part)
			}
		}
	}

	if foPresent {
		if fo, ok := parseFailureOptions(foValue); ok {
			r.FailureOptions = fo
		} else {
			warn("invalid fo value %q ignored", foValue)
		}
	}
	if hasPct {
		r.Pct = pctValue
	}
	if tSeen {
		r.Testing = testing
	} else {
		r.Testing = hasPct && pctValue == 0
	}

	// Section 4.10.1: "If a retrieved DMARC Policy Record does not contain
	// a valid "p" tag, or contains an "sp" or "np" tag that is not valid",
	// then with a syntactically valid rua URI the receiver "MUST act as if
	// a record containing "p=none" was retrieved"; otherwise it "applies
	// no DMARC processing to this message". A missing p is not a valid p
	// (Section 4.7, "p", refers to 4.10.1).
	if !pSeen {
		badPolicy = append([]string{"missing p"}, badPolicy...)
	}
	if len(badPolicy) > 0 {
		r.Policy = PolicyNone
		if len(r.RUA) == 0 {
			return r, &SyntaxError{Record: txt, Msg: strings.Join(badPolicy, ", ") + " and no valid rua", Err: ErrNoPolicy}
		}
		warn("%s with a valid rua: treated as exactly p=none (RFC 9989 section 4.10.1)", strings.Join(badPolicy, ", "))
		return r, nil
	}
	r.Policy, r.SubdomainPolicy, r.NonexistentPolicy = policy, sp, np
	return r, nil
}

// IsRecord reports whether a TXT record is a DMARC record: its first tag
// is "v" (the name case-insensitive, as ABNF literals are) with the value
// "DMARC1" (case-sensitive), white space allowed around "=" (RFC 9989
// Section 4.7). The same test serves policy records and the records that
// authorize an external report destination (RFC 9990, RFC 9991).
func IsRecord(txt string) bool {
	first, _, _ := strings.Cut(txt, ";")
	name, value, ok := strings.Cut(first, "=")
	return ok && strings.EqualFold(trimWSP(name), "v") && trimWSP(value) == "DMARC1"
}

func parsePolicy(s string) (Policy, bool) {
	switch p := Policy(s); p {
	case PolicyNone, PolicyQuarantine, PolicyReject:
		return p, true
	}
	return "", false
}

// parseFailureOptions parses a colon-separated list of "0", "1", "d" and "s"
// (dmarc-fo, RFC 9989 Section 4.8). Duplicates are dropped. "0" together
// with "1" is accepted: "1" asks for a superset of what "0" asks for.
func parseFailureOptions(s string) (FailureOptions, bool) {
	var fo FailureOptions
next:
	for _, o := range strings.Split(s, ":") {
		o = trimWSP(o)
		for _, n := range failureOptionNames {
			if o == n.name {
				fo |= n.o
				continue next
			}
		}
		return 0, false
	}
	return fo, true
}

// parseURIList parses dmarc-urilist (RFC 9989 Section 4.8): comma-separated
// URIs, each optionally with the obsolete "!size[kmgt]" suffix. Invalid URIs
// are reported to bad and left out.
func parseURIList(s string, bad func(string)) []URI {
	var uris []URI
	for _, raw := range strings.Split(s, ",") {
		raw = trimWSP(raw)
		u, ok := parseURI(raw)
		if !ok {
			bad(raw)
			continue
		}
		uris = append(uris, u)
	}
	return uris
}

func parseURI(s string) (URI, bool) {
	addr, size, hasSize := strings.Cut(s, "!")
	var u URI
	if hasSize {
		n, ok := parseSize(size)
		if !ok {
			return URI{}, false
		}
		u.MaxSize = n
	}
	// RFC 3986 URI with a scheme; commas and "!" must be percent-encoded,
	// whitespace cannot occur.
	if addr == "" || strings.ContainsAny(addr, " \t") {
		return URI{}, false
	}
	pu, err := url.Parse(addr)
	if err != nil || pu.Scheme == "" || (pu.Opaque == "" && pu.Host == "" && pu.Path == "") {
		return URI{}, false
	}
	u.Address = addr
	return u, true
}

// parseSize parses obs-dmarc-report-size without the "!": 1*DIGIT with an
// optional unit k, m, g or t (binary multiples, as in RFC 7489 Section 6.2).
func parseSize(s string) (uint64, bool) {
	mult := uint64(1)
	if s != "" {
		switch s[len(s)-1] {
		case 'k', 'K':
			mult = 1 << 10
		case 'm', 'M':
			mult = 1 << 20
		case 'g', 'G':
			mult = 1 << 30
		case 't', 'T':
			mult = 1 << 40
		}
		if mult != 1 {
			s = s[:len(s)-1]
		}
	}
	if !isDigits(s) {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || (n != 0 && n > ^uint64(0)/mult) {
		return 0, false
	}
	return n * mult, true
}

// trimWSP trims WSP (space and horizontal tab, RFC 5234) from both ends.
func trimWSP(s string) string {
	return strings.Trim(s, " \t")
}

func isAlpha(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') {
			return false
		}
	}
	return true
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// isDMARCValue reports whether s matches 1*dmarc-value: printable ASCII and
// space, no semicolon (RFC 9989 Section 4.8).
func isDMARCValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == ';' {
			return false
		}
	}
	return s != ""
}
