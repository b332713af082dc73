// Package dkim verifies DKIM signatures (RFC 6376) of a message that arrives
// piecewise through the milter protocol, as ed25519-sha256 (RFC 8463) and
// rsa-sha256 signatures, and refuses rsa-sha1 and RSA keys shorter than 1024
// bits (RFC 8301). With Options.ARC it also validates the message's ARC
// chain (RFC 8617; arc.go says why here).
//
// The verification is our own, on the standard library's crypto, as mox
// does it, rather than github.com/emersion/go-msgauth/dkim (which the tests
// keep as a cross-check). go-msgauth v0.7.0 gets three rules of RFC 6376
// wrong that make valid mail fail or let a key's restriction pass: it
// compares the i= domain with d= case-sensitively (domain names compare
// case-insensitively), it does not decode i= as dkim-quoted-printable
// (section 3.5), and it ignores the key flag t=s (section 3.6.1). Its API
// also costs every message a regular expression over the signature field
// and a fresh parse of the public key, and it reads the message through an
// io.Reader, so a streamed message needed a pipe and a goroutine.
//
// Here the header is canonicalized and hashed at EndHeaders (section 3.7),
// the body is canonicalized and hashed as each chunk arrives (sections
// 3.4.3, 3.4.4), and the keys are looked up and the signatures checked at
// Close. Nothing of the body is kept: runs of empty lines, which are not
// hashed if they end the body, are counted rather than buffered, so memory
// per message is the header until EndHeaders, then a few hash states.
// Parsed keys are kept in a KeyCache shared by all messages, RSA keys with
// their modulus prepared for verification (rsa.go; filippo.io/bigmod, the
// standard library's own modular arithmetic re-exported, since crypto/rsa
// sets the modulus up again on every call). The key
// lookups start at EndHeaders (Options.Prefetch), so DNS time overlaps the
// transfer of the body.
package dkim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/dmarc-milter/dmarc-milter/internal/rfc5322"
)

// Status is a DKIM result value for Authentication-Results (RFC 8601 section
// 2.7.1).
type Status string

// RFC 8601 section 2.7.1 result values.
const (
	Pass      Status = "pass"
	Fail      Status = "fail"
	Neutral   Status = "neutral"
	Policy    Status = "policy"
	TempError Status = "temperror"
	PermError Status = "permerror"
	None      Status = "none"
)

// DefaultMaxSignatures is the number of DKIM-Signature fields verified when
// Options.MaxSignatures is not set.
const DefaultMaxSignatures = 5

// Errors a Result can carry.
var (
	// ErrTooManySignatures is the error of the signatures beyond
	// Options.MaxSignatures: they are not verified (RFC 6376 section 6.1
	// allows verifiers to limit the number of signatures they try) and are
	// reported as PermError.
	ErrTooManySignatures = errors.New("dkim: too many signatures, not verified")
	// ErrExpired is the error of a signature whose x= lies before
	// Options.Now (RFC 6376 section 3.5).
	ErrExpired = errors.New("dkim: signature has expired")
	// ErrClosed is returned by WriteBody after Close or Abort.
	ErrClosed = errors.New("dkim: verifier closed")
	// ErrHeaderTooLarge is the error of every signature of a message
	// whose header outgrew the caller's bounds (see HeaderTooLarge).
	ErrHeaderTooLarge = errors.New("dkim: header too large to keep; not verified")

	// ErrBodyHash is the error of a signature whose body hash does not
	// match the body (RFC 6591 Auth-Failure "bodyhash").
	ErrBodyHash = errors.New("dkim: body hash did not verify")
	// ErrKeyRevoked is the error of a signature whose key record has an
	// empty p= (RFC 6376 section 3.6.1; RFC 6591 "revoked").
	ErrKeyRevoked = errors.New("dkim: key revoked (empty p=)")

	// ErrSignature is the error of a signature whose header signature
	// (b=) does not verify (RFC 6591 Auth-Failure "signature").
	ErrSignature = errors.New("dkim: signature did not verify")

	errNoKey         = errors.New("dkim: no key for signature")
	errBodyLength    = errors.New("dkim: signature covers only part of the body length (l=); not trusted")
	errShortBody     = errors.New("dkim: body is shorter than its l= length")
	errKeyMismatch   = errors.New("dkim: key does not fit the signature")
	errStrictKey     = errors.New("dkim: key flag t=s: the i= domain must be d= itself")
	errMultipleKeys  = errors.New("dkim: multiple TXT records for the key")
	errVerifierPanic = errors.New("dkim: verifier failed on this message")
)

// Result is the outcome of one DKIM-Signature header field.
type Result struct {
	Status     Status
	Domain     string // d=, the SDID
	Selector   string // s=
	Identifier string // i= (the AUID), or "@" + d= when i= is absent
	Algorithm  string // a=
	// BPrefix is the first 8 characters of b= without whitespace, for the
	// header.b property of Authentication-Results (RFC 6008 section 4).
	BPrefix string
	// Err says why when Status is not Pass: ErrBodyHash when only the
	// body hash failed, ErrSignature when the header signature (b=) did.
	Err error
	// HeaderSigned: the header signature (b=) verifies with the domain's
	// key, whether or not the body hash does. It is true for a Pass, and
	// for a Fail with ErrBodyHash: cryptographic evidence that d= signed
	// this header and that only the body changed since (a mailing list's
	// footer, a forwarder's line). Nothing else of the body is vouched
	// for: a genuine header replayed with a new body gets the same.
	HeaderSigned bool
}

// Options configures a Verifier.
type Options struct {
	// LookupTXT returns the TXT records of name, one string per record
	// (the strings of a record concatenated). Errors must be (or wrap) a
	// *net.DNSError: NXDOMAIN or NODATA (IsNotFound) gives PermError (RFC
	// 6376 section 6.1.2); any other error gives TempError. If nil, every
	// lookup fails temporarily.
	LookupTXT func(ctx context.Context, name string) ([]string, error)
	// Keys, if set, keeps parsed key records across messages.
	Keys *KeyCache
	// MaxSignatures is how many DKIM-Signature fields, in header order, are
	// verified; if zero or negative, DefaultMaxSignatures. The fields beyond
	// it still get a Result, with Status PermError and ErrTooManySignatures.
	MaxSignatures int
	// LeadingSpace is true when the MTA delivers header values with their
	// leading whitespace intact (milter SMFIP_HDR_LEADSPC).
	LeadingSpace bool
	// Prefetch, if set, is called at EndHeaders with the key record name
	// (RFC 6376 section 3.6.2.1) of each signature that will be verified,
	// so that a caching resolver can start the lookup while the body
	// arrives. It must not block.
	Prefetch func(name string)
	// Now is the clock for signature expiry (x=); if nil, time.Now.
	Now func() time.Time
	// ARC also validates the message's ARC chain (RFC 8617); see
	// Verifier.ARC.
	ARC bool

	// weak verifies rsa-sha1 and RSA keys under 1024 bits, which RFC 8301
	// forbids: only for the tests that run legacy corpora through the
	// cryptography.
	weak bool
}

// Verifier verifies the DKIM signatures of one message. Call EndHeaders
// with the header, WriteBody for each body chunk, then Close; or Abort at
// any point. Its methods must not be called concurrently.
type Verifier struct {
	opts Options
	ctx  context.Context // Close's, for its key lookups

	sigs     []*signature // DKIM-Signature fields, in header order
	bodies   []*bodyHash  // the distinct body hashes the signatures need
	arc      *arcChain    // the ARC chain, with Options.ARC
	arcDone  ARCResult    // its validation, at Close
	started  bool         // EndHeaders called
	closed   bool         // Close or Abort called
	tooLarge bool         // HeaderTooLarge called
}

// NewVerifier returns a Verifier for one message.
func NewVerifier(opts Options) *Verifier {
	if opts.MaxSignatures <= 0 {
		opts.MaxSignatures = DefaultMaxSignatures
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Verifier{opts: opts}
}

// HeaderTooLarge tells the Verifier that the caller stopped keeping header
// fields because the header outgrew its bounds; fields are those it kept.
// The signatures among them get PermError (ErrHeaderTooLarge), since their
// header hash needs every field, and EndHeaders ignores its fields.
func (v *Verifier) HeaderTooLarge(fields []rfc5322.Field) {
	if v.started || v.closed {
		return
	}
	v.tooLarge = true
	for _, f := range fields {
		if strings.EqualFold(strings.TrimSpace(f.Name), "DKIM-Signature") {
			sig := parseSignature(f.Value, v.opts.Now(), v.opts.weak)
			sig.err = ErrHeaderTooLarge
			v.sigs = append(v.sigs, sig)
		}
	}
}

// EndHeaders takes the header: fields are the message's header fields as
// the MTA delivered them, in order, read during the call and not kept (the
// strings are shared, never copied, and the header is rebuilt only if a
// signature needs it). Each DKIM-Signature field is parsed, its header
// hash computed and its key lookup prefetched. Without a DKIM-Signature
// the body is ignored.
func (v *Verifier) EndHeaders(fields []rfc5322.Field) error {
	if v.closed {
		return ErrClosed
	}
	if v.started {
		return nil
	}
	v.started = true
	if v.tooLarge {
		fields = nil
	}
	var hdr *header // rebuilt once a signature needs it
	now := v.opts.Now()
	for i, f := range fields {
		if !strings.EqualFold(strings.TrimSpace(f.Name), "DKIM-Signature") {
			continue
		}
		sig := parseSignature(f.Value, now, v.opts.weak)
		v.sigs = append(v.sigs, sig)
		if sig.err != nil || len(v.sigs) > v.opts.MaxSignatures {
			continue
		}
		if hdr == nil {
			hdr = newHeader(fields, v.opts.LeadingSpace)
		}
		sig.headerHash = headerHash(sig, hdr, hdr.raw[i])
		sig.body = v.bodyHashFor(sig)
		if v.opts.Prefetch != nil {
			v.opts.Prefetch(sig.keyName)
		}
	}
	if v.opts.ARC {
		if hdr == nil && hasARC(fields) {
			hdr = newHeader(fields, v.opts.LeadingSpace)
		}
		v.arc = v.collectARC(fields, hdr)
	}
	return nil
}

// hasARC reports whether the header has an ARC field.
func hasARC(fields []rfc5322.Field) bool {
	for _, f := range fields {
		if len(f.Name) > 4 && strings.EqualFold(f.Name[:4], "ARC-") {
			return true
		}
	}
	return false
}

// ARC returns the validation of the message's ARC chain, after Close;
// Status is "" without Options.ARC, and ARCFail with
// ErrHeaderTooLarge when the header outgrew the caller's bounds.
func (v *Verifier) ARC() ARCResult { return v.arcDone }

// bodyHashFor returns a body hash for sig's canonicalization, hash and l=,
// shared with earlier signatures that need the same.
func (v *Verifier) bodyHashFor(sig *signature) *bodyHash {
	for _, b := range v.bodies {
		if b.c == sig.bodyCanon && b.alg == sig.hash && b.limit == sig.length {
			return b
		}
	}
	b := newBodyHash(sig.bodyCanon, sig.hash, sig.length)
	v.bodies = append(v.bodies, b)
	return b
}

// WriteBody passes the next body chunk to the verifier, which hashes it
// and does not keep it.
func (v *Verifier) WriteBody(chunk []byte) error {
	if v.closed {
		return ErrClosed
	}
	if !v.started {
		if err := v.EndHeaders(nil); err != nil {
			return err
		}
	}
	for _, b := range v.bodies {
		b.Write(chunk)
	}
	return nil
}

// Close ends the message and returns one Result per DKIM-Signature field, in
// header order; none when the header had no DKIM-Signature. The key
// lookups it waits for are bounded by ctx: the caller's DNS budget for
// the end of the message, which the time the client took to send it
// never counts against.
func (v *Verifier) Close(ctx context.Context) (results []Result) {
	if v.closed {
		return nil
	}
	if !v.started {
		_ = v.EndHeaders(nil)
	}
	v.closed = true
	v.ctx = ctx
	defer func() { v.ctx = nil }()
	if v.opts.ARC {
		v.arcDone = v.closeARC()
	}
	if len(v.sigs) == 0 {
		return nil
	}
	results = make([]Result, len(v.sigs))
	for i, sig := range v.sigs {
		results[i] = Result{Domain: sig.domain, Selector: sig.selector, Identifier: sig.identifier,
			Algorithm: sig.algorithm, BPrefix: sig.bprefix}
	}
	defer func() {
		// A bug must not take the daemon down on a hostile message; the
		// same message would fail again, so the result is permanent.
		if p := recover(); p != nil {
			for i := range results {
				if results[i].Status == "" {
					results[i].Status, results[i].Err = PermError, fmt.Errorf("%w: %v", errVerifierPanic, p)
				}
			}
		}
		v.sigs, v.bodies, v.arc = nil, nil, nil
	}()
	for i, sig := range v.sigs {
		r := &results[i]
		switch {
		case sig.err != nil:
			r.Status, r.Err = PermError, sig.err
		case i >= v.opts.MaxSignatures:
			r.Status, r.Err = PermError, ErrTooManySignatures
		default:
			r.Status, r.Err, r.HeaderSigned = v.verify(sig)
		}
	}
	return results
}

// closeARC validates the ARC chain; a bug must not take the daemon down on
// a hostile chain, which then fails.
func (v *Verifier) closeARC() (r ARCResult) {
	if v.tooLarge {
		return ARCResult{Status: ARCFail, Err: ErrHeaderTooLarge}
	}
	if v.arc == nil {
		return ARCResult{Status: ARCNone}
	}
	defer func() {
		if p := recover(); p != nil {
			r = ARCResult{Status: ARCFail, Err: fmt.Errorf("%w: %v", errVerifierPanic, p)}
		}
	}()
	return v.validateARC(v.arc)
}

// verify checks one parsed signature (RFC 6376 section 6.1.2, 6.1.3)
// and reports whether its header signature verifies. Unlike section
// 6.1.3's order, b= is checked even when the body hash fails, so that a
// body modified in transit can be told from a forged header.
func (v *Verifier) verify(sig *signature) (Status, error, bool) {
	key, status, err := v.usableKey(sig)
	if err != nil {
		return status, err, false
	}

	// Section 6.1.3: the signature, and the body hash.
	if !key.verify(sig.hash, sig.headerHash, sig.b) {
		return Fail, ErrSignature, false
	}
	bh, n := sig.body.Sum()
	switch {
	case sig.length >= 0 && n < sig.length:
		return Fail, errShortBody, true
	case !bytes.Equal(bh, sig.bh):
		return Fail, ErrBodyHash, true
	}
	if sig.length >= 0 {
		// The signature holds, but for the first l= bytes of the body
		// only: whatever follows is unsigned (section 8.2). Local policy.
		return Policy, errBodyLength, true
	}
	return Pass, nil, true
}

// usableKey looks up the key of sig and checks that it may verify it
// (RFC 6376 section 3.6.1; RFC 8301 section 3.2); on error the status is
// TempError or PermError.
func (v *Verifier) usableKey(sig *signature) (*publicKey, Status, error) {
	key, err := v.key(sig)
	if err != nil {
		var temp *tempError
		if errors.As(err, &temp) {
			return nil, TempError, temp.err
		}
		return nil, PermError, err
	}
	// Section 3.6.1: the key must fit the signature.
	if key.keyType != sig.keyType {
		return nil, PermError, fmt.Errorf("%w: k=%s for a=%s", errKeyMismatch, key.keyType, sig.algorithm)
	}
	if key.hashes != nil {
		_, name, _ := strings.Cut(strings.ToLower(sig.algorithm), "-")
		if !containsFold(key.hashes, name) {
			return nil, PermError, fmt.Errorf("%w: h=%s does not allow %s", errKeyMismatch, strings.Join(key.hashes, ":"), name)
		}
	}
	if key.strict && sig.auidDomain != strings.ToLower(sig.domain) {
		return nil, PermError, errStrictKey
	}
	if key.rsa != nil && key.rsa.N.BitLen() < 1024 && !sig.weak {
		return nil, PermError, fmt.Errorf("%w: %d bits", errKeyTooWeak, key.rsa.N.BitLen())
	}
	return key, "", nil
}

// tempError marks a key lookup that may succeed later.
type tempError struct{ err error }

func (e *tempError) Error() string { return e.err.Error() }

// key looks up and parses the key record of sig (section 3.6.2).
func (v *Verifier) key(sig *signature) (*publicKey, error) {
	txts, err := v.lookupTXT(sig.keyName)
	if err != nil {
		var dnsErr *net.DNSError
		if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
			return nil, fmt.Errorf("%w: %s", errNoKey, sig.keyName)
		}
		return nil, &tempError{fmt.Errorf("dkim: key lookup: %w", err)}
	}
	switch len(txts) {
	case 0:
		return nil, fmt.Errorf("%w: %s", errNoKey, sig.keyName)
	case 1:
	default:
		// Section 6.1.2 leaves the choice to the verifier; an ambiguous
		// key is not used.
		return nil, errMultipleKeys
	}
	return v.opts.Keys.parse(txts[0])
}

// lookupTXT calls Options.LookupTXT with Close's context.
func (v *Verifier) lookupTXT(name string) ([]string, error) {
	if v.opts.LookupTXT == nil {
		return nil, &net.DNSError{Err: "no resolver configured", Name: name, IsTemporary: true}
	}
	return v.opts.LookupTXT(v.ctx, name)
}

// Abort stops verification and releases the message.
func (v *Verifier) Abort() {
	if v.closed {
		return
	}
	v.closed = true
	v.sigs, v.bodies, v.arc = nil, nil, nil
}
