package dkim

import (
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/dmarc-milter/dmarc-milter/internal/rfc5322"
)

// ARC (RFC 8617) is validated here, with the DKIM verifier, because an
// ARC-Message-Signature is a DKIM signature under another name: its body
// hash streams with the DKIM ones (shared when the canonicalization is the
// same), its keys are DKIM key records in the same cache, and its header
// hash is DKIM's. The ARC-Seal signs the ARC sets with DKIM's relaxed
// header canonicalization. ARC is moving to Historic
// (draft-ietf-dmarc-arc-to-historic): the daemon uses a validated chain
// only as a trust list of sealers the operator names.

// ARCStatus is a chain validation status (RFC 8617 section 4.4), the arc=
// result of Authentication-Results (section 10.1).
type ARCStatus string

// Chain validation statuses.
const (
	ARCNone ARCStatus = "none"
	ARCPass ARCStatus = "pass"
	ARCFail ARCStatus = "fail"
)

// MaxARCSets is the most ARC sets a chain may have (RFC 8617 section
// 4.2.1); a chain with more fails.
const MaxARCSets = 50

// ARCResult is the validation of a message's ARC chain.
type ARCResult struct {
	// Status is "" when the chain was not validated (Options.ARC off).
	Status ARCStatus
	// Err says why the chain failed.
	Err error
	// Sets is the number of ARC sets.
	Sets int
	// Sealer and Selector are the d= and s= of the newest ARC-Seal.
	Sealer, Selector string
	// OldestPass is the lowest instance from which every
	// ARC-Message-Signature up to the newest validates, 0 when all do
	// (RFC 8617 section 5.2, header.oldest-pass).
	OldestPass int
	// SignsFrom: the newest ARC-Message-Signature signs the From field.
	SignsFrom bool
	// Results is the newest ARC-Authentication-Results after its "i=N;":
	// the sealer's authentication results.
	Results string
}

// Errors of a failed chain.
var (
	errARCStructure = errors.New("arc: malformed chain")
	errARCSeal      = errors.New("arc: seal did not verify")
	errARCMessage   = errors.New("arc: newest message signature did not verify")
	errARCFailed    = errors.New("arc: the newest seal says cv=fail")
)

// DMARCPass reports whether the newest ARC-Authentication-Results say
// dmarc=pass with header.from equal to fromDomain.
func (r *ARCResult) DMARCPass(fromDomain string) bool {
	if r.Status != ARCPass {
		return false
	}
	results, err := rfc5322.StripComments(r.Results)
	if err != nil {
		return false
	}
	specs := strings.Split(results, ";")
	for _, spec := range specs[min(1, len(specs)):] { // the first is the authserv-id
		words := strings.Fields(spec)
		if len(words) == 0 || !strings.EqualFold(words[0], "dmarc=pass") {
			continue
		}
		for _, w := range words[1:] {
			if name, value, ok := strings.Cut(w, "="); ok && strings.EqualFold(name, "header.from") &&
				strings.EqualFold(strings.TrimSuffix(strings.Trim(value, `"`), "."), fromDomain) {
				return true
			}
		}
	}
	return false
}

// arcSet is one ARC set: the three fields of an instance, as they appear
// in the message (whole fields, for the seal's hash), and the parsed
// signatures.
type arcSet struct {
	aar, ams, seal string
	msgSig         *signature // the ARC-Message-Signature
	sealSig        *signature // the ARC-Seal
	cv             ARCStatus
	have           [3]int // how many of AAR, AMS, AS the instance has
}

// arcChain is what EndHeaders keeps of an ARC chain for Close.
type arcChain struct {
	sets    []*arcSet // by instance - 1
	err     error     // a structural failure, found at EndHeaders
	results string
}

// arcKinds are the ARC field names, in the order of a set in the seal's
// hash (RFC 8617 section 5.1.1).
var arcKinds = [3]string{"arc-authentication-results", "arc-message-signature", "arc-seal"}

// collectARC gathers the ARC sets from the header (RFC 8617 section 5.2
// steps 1 to 3), checks their structure, computes the header hash of each
// ARC-Message-Signature and asks for their body hashes. hdr is the header
// rebuilt, nil if it has no ARC field.
func (v *Verifier) collectARC(fields []rfc5322.Field, hdr *header) *arcChain {
	c := &arcChain{}
	for i, f := range fields {
		kind := -1
		for k, name := range arcKinds {
			if strings.EqualFold(strings.TrimSpace(f.Name), name) {
				kind = k
			}
		}
		if kind < 0 {
			continue
		}
		if c.err != nil {
			continue
		}
		inst, sig, err := parseARCField(kind, f.Value)
		if err != nil {
			c.err = fmt.Errorf("%w: %s: %v", errARCStructure, arcKinds[kind], err)
			continue
		}
		if inst > MaxARCSets {
			c.err = fmt.Errorf("%w: instance %d beyond %d", errARCStructure, inst, MaxARCSets)
			continue
		}
		for len(c.sets) < inst {
			c.sets = append(c.sets, &arcSet{})
		}
		set := c.sets[inst-1]
		set.have[kind]++
		switch kind {
		case 0:
			set.aar = hdr.raw[i]
		case 1:
			set.ams, set.msgSig = hdr.raw[i], sig
			if sig.err == nil {
				sig.headerHash = headerHash(sig, hdr, hdr.raw[i])
				sig.body = v.bodyHashFor(sig)
				if v.opts.Prefetch != nil {
					v.opts.Prefetch(sig.keyName)
				}
			}
		case 2:
			set.seal, set.sealSig = hdr.raw[i], sig
			set.cv = sig.cv
			if sig.err == nil && v.opts.Prefetch != nil {
				v.opts.Prefetch(sig.keyName)
			}
		}
	}
	if c.err == nil {
		for i, set := range c.sets {
			if set.have != [3]int{1, 1, 1} {
				c.err = fmt.Errorf("%w: instance %d has %d AAR, %d AMS, %d AS fields", errARCStructure, i+1, set.have[0], set.have[1], set.have[2])
				break
			}
		}
	}
	if c.err == nil && len(c.sets) > 0 {
		_, value, _ := strings.Cut(c.sets[len(c.sets)-1].aar, ":")
		_, results, _ := strings.Cut(value, ";")
		c.results = trimFWS(results)
	}
	return c
}

// parseARCField parses one ARC field: its instance and, for an
// ARC-Message-Signature or ARC-Seal, the signature (whose err says what
// makes it unusable). An instance that cannot be read, or an ARC-Seal with
// h= or a bad cv=, is an error of the whole chain.
func parseARCField(kind int, value string) (int, *signature, error) {
	if kind == 0 {
		// RFC 8617 section 4.1.1: "i=" instance ";" then the results.
		v := trimFWS(value)
		spec, _, ok := strings.Cut(v, ";")
		name, inst, ok2 := strings.Cut(spec, "=")
		if !ok || !ok2 || trimFWS(name) != "i" {
			return 0, nil, errors.New("no leading i= instance")
		}
		n, err := instance(inst)
		return n, nil, err
	}
	tags, err := tagList(value)
	if err != nil {
		return 0, nil, err
	}
	n, err := instance(tags.get("i"))
	if err != nil {
		return 0, nil, err
	}
	sig := &signature{length: -1}
	sig.err = sig.parseARC(tags, kind == 2)
	if kind == 2 {
		if _, ok := tags.lookup("h"); ok {
			return 0, nil, errors.New("ARC-Seal with h=")
		}
		switch cv := tags.get("cv"); {
		case strings.EqualFold(cv, "none"):
			sig.cv = ARCNone
		case strings.EqualFold(cv, "pass"):
			sig.cv = ARCPass
		case strings.EqualFold(cv, "fail"):
			sig.cv = ARCFail
		default:
			return 0, nil, fmt.Errorf("bad cv=%q", cv)
		}
	}
	return n, sig, nil
}

// instance parses an i= instance: 1 to MaxARCSets.
func instance(s string) (int, error) {
	s = trimFWS(s)
	n, err := strconv.Atoi(s)
	if err != nil || !allDigits(s) || n < 1 || n > MaxARCSets {
		return 0, fmt.Errorf("bad instance i=%q", s)
	}
	return n, nil
}

// parseARC checks the tags of an ARC-Message-Signature (RFC 8617 section
// 4.1.2: a DKIM signature with i= the instance and no v=) or of an
// ARC-Seal (section 4.1.3: no h=, no bh=, relaxed header
// canonicalization).
func (sig *signature) parseARC(tags tagSet, seal bool) error {
	required := []string{"a", "b", "bh", "d", "h", "s"}
	if seal {
		required = []string{"a", "b", "cv", "d", "s"}
	}
	for _, t := range required {
		if _, ok := tags.lookup(t); !ok {
			return fmt.Errorf("%w: missing required tag %s=", errSignature, t)
		}
	}
	sig.domain = stripFWS(tags.get("d"))
	sig.selector = stripFWS(tags.get("s"))
	sig.algorithm = tags.get("a")
	switch sig.algorithm {
	case "rsa-sha256":
		sig.keyType = "rsa"
	case "ed25519-sha256":
		sig.keyType = "ed25519"
	default:
		return fmt.Errorf("%w: unknown algorithm %q", errAlgorithm, sig.algorithm)
	}
	sig.hash = crypto.SHA256
	var err error
	if sig.b, err = base64Value(tags.get("b")); err != nil || len(sig.b) == 0 {
		return fmt.Errorf("%w: bad b= value", errSignature)
	}
	if !validDomain(sig.domain) {
		return fmt.Errorf("%w: bad d= domain %q", errSignature, sig.domain)
	}
	if !validSelector(sig.selector) {
		return fmt.Errorf("%w: bad s= selector %q", errSignature, sig.selector)
	}
	sig.keyName = sig.selector + "._domainkey." + sig.domain
	sig.auidDomain = strings.ToLower(sig.domain)
	if t, ok := tags.lookup("t"); ok {
		if _, err := timestamp(t); err != nil || strings.ContainsAny(t, " \t\r\n") {
			return fmt.Errorf("%w: bad t=%s", errSignature, t)
		}
	}
	sig.headerCanon = canonRelaxed
	if seal {
		return nil
	}
	if sig.bh, err = base64Value(tags.get("bh")); err != nil || len(sig.bh) == 0 {
		return fmt.Errorf("%w: bad bh= value", errSignature)
	}
	if _, ok := tags.lookup("l"); ok {
		// A partial body hash leaves the rest unsigned; refused rather
		// than trusted (and it would need a body hash of its own).
		return fmt.Errorf("%w: l= in an ARC-Message-Signature", errSignature)
	}
	sig.headerCanon, sig.bodyCanon = canonSimple, canonSimple
	if err := sig.parseC(tags); err != nil {
		return err
	}
	if h := trimFWS(tags.get("h")); h != "" {
		for name := range strings.SplitSeq(h, ":") {
			name = strings.ToLower(trimFWS(name))
			if name == "" {
				// Signs nothing, as the suite's reference (dkimpy) reads
				// it: less is signed, never more.
				continue
			}
			// Section 4.1.2: the ARC-Seal is never signed by the AMS.
			if name == "arc-seal" {
				return fmt.Errorf("%w: h= includes ARC-Seal", errSignature)
			}
			sig.headers = append(sig.headers, name)
		}
	}
	return nil
}

// validateARC validates the chain (RFC 8617 section 5.2) once the body
// has been hashed.
func (v *Verifier) validateARC(c *arcChain) ARCResult {
	if len(c.sets) == 0 && c.err == nil {
		return ARCResult{Status: ARCNone}
	}
	r := ARCResult{Status: ARCFail, Sets: len(c.sets), Results: c.results}
	if c.err != nil {
		r.Err = c.err
		return r
	}
	n := len(c.sets)
	newest := c.sets[n-1]
	r.Sealer, r.Selector = newest.sealSig.domain, newest.sealSig.selector
	// Step 2 and 3: the newest says fail; the cv values of the sets.
	if newest.cv == ARCFail {
		r.Err = errARCFailed
		return r
	}
	for i, set := range c.sets {
		want := ARCPass
		if i == 0 {
			want = ARCNone
		}
		if set.cv != want {
			r.Err = fmt.Errorf("%w: instance %d has cv=%s, want %s", errARCStructure, i+1, set.cv, want)
			return r
		}
	}
	// Step 4: the newest AMS.
	if err := v.verifyAMS(newest.msgSig); err != nil {
		r.Err = fmt.Errorf("%w: %v", errARCMessage, err)
		return r
	}
	r.SignsFrom = containsFold(newest.msgSig.headers, "from")
	// Step 5: oldest-pass.
	for i := n - 2; i >= 0; i-- {
		if v.verifyAMS(c.sets[i].msgSig) != nil {
			r.OldestPass = i + 2
			break
		}
	}
	// Step 6: every seal, newest first.
	for i := n - 1; i >= 0; i-- {
		if err := v.verifySeal(c.sets[:i+1]); err != nil {
			r.Err = fmt.Errorf("%w: instance %d: %v", errARCSeal, i+1, err)
			return r
		}
	}
	r.Status = ARCPass
	return r
}

// verifyAMS checks an ARC-Message-Signature: key, body hash, signature.
func (v *Verifier) verifyAMS(sig *signature) error {
	if sig.err != nil {
		return sig.err
	}
	key, _, err := v.usableKey(sig)
	if err != nil {
		return err
	}
	if bh, _ := sig.body.Sum(); !bytes.Equal(bh, sig.bh) {
		return ErrBodyHash
	}
	if !key.verify(sig.hash, sig.headerHash, sig.b) {
		return ErrSignature
	}
	return nil
}

// verifySeal checks the ARC-Seal of the last of sets over sets (RFC 8617
// section 5.1.1): each set's AAR, AMS and AS in instance order, relaxed,
// the seal being checked with an empty b= and no final CRLF.
func (v *Verifier) verifySeal(sets []*arcSet) error {
	last := sets[len(sets)-1]
	sig := last.sealSig
	if sig.err != nil {
		return sig.err
	}
	key, _, err := v.usableKey(sig)
	if err != nil {
		return err
	}
	h := sig.hash.New()
	var buf []byte
	for i, set := range sets {
		for _, f := range []string{set.aar, set.ams, set.seal} {
			if i == len(sets)-1 && f == set.seal {
				buf = canonHeader(buf[:0], canonRelaxed, stripB(f))
				buf = buf[:len(buf)-2]
			} else {
				buf = canonHeader(buf[:0], canonRelaxed, f)
			}
			h.Write(buf)
		}
	}
	if !key.verify(sig.hash, h.Sum(nil), sig.b) {
		return ErrSignature
	}
	return nil
}
