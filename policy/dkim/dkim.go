// Package dkim verifies DKIM signatures (RFC 6376) of a message that arrives
// piecewise through the milter protocol, as ed25519-sha256 (RFC 8463) and
// rsa-sha256 signatures, and refuses rsa-sha1 and RSA keys shorter than 1024
// bits (RFC 8301).
//
// The cryptography, canonicalization (RFC 6376 section 3.4) and key record
// parsing (section 3.6.1) are those of github.com/emersion/go-msgauth/dkim.
// This package rebuilds the header byte-exactly from the (name, value) pairs
// the MTA delivers, and maps the library's errors to RFC 8601 result values.
// A message of up to InlineMax bytes is kept and verified at Close in the
// calling goroutine: most mail is that small, and handing it to another
// goroutine costs more scheduler work than hashing it. A larger message is
// fed to the library's verifier through an io.Pipe from a goroutine as it
// streams, so memory per message does not grow with the size of the body.
// Either way the key lookups start at EndHeaders (Options.Prefetch), so DNS
// time overlaps the transfer of the body.
//
// Memory: a Verifier keeps the header and at most InlineMax bytes of body
// until it streams (go-msgauth then keeps its own copy of the header,
// bounded by the MTA's header size limit) and the hashing state of each
// signature; streamed body chunks are not kept. One exception
// lies in go-msgauth's body canonicalizers: because trailing empty lines are
// not hashed (RFC 6376 sections 3.4.3 and 3.4.4), they hold back a run of
// empty lines (with relaxed, also whitespace-only lines) until a non-empty
// line follows, so such a run would be buffered whole. A Verifier therefore
// stops at MaxBlankRun bytes of consecutive white space and line breaks: the
// message's signatures then get PermError (ErrBlankRun), a defined result for
// a body no legitimate signer produces, and memory stays bounded.
package dkim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	msgauth "github.com/emersion/go-msgauth/dkim"
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

// pipePiece is the largest write handed to go-msgauth at once.
const pipePiece = 8 << 10

// InlineMax is the size of header and body up to which a signed message is
// kept and verified at Close instead of streamed (see the package
// documentation).
const InlineMax = 64 << 10

// MaxBlankRun is the longest run of consecutive white space and line
// breaks in a body that is hashed (see the package documentation).
const MaxBlankRun = 1 << 20

// errVerifierPanic marks a panic inside go-msgauth's verifier.
var errVerifierPanic = errors.New("dkim: verifier failed on this message")

// Errors a Result can carry besides those of go-msgauth.
var (
	// ErrBlankRun is the error of every signature of a message whose body
	// holds more than MaxBlankRun bytes of consecutive white space.
	ErrBlankRun = errors.New("dkim: body has more than 1 MiB of consecutive blank lines; not verified")

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
	// Err says why when Status is not Pass.
	Err error
}

// Options configures a Verifier.
type Options struct {
	// LookupTXT returns the TXT records of name, one string per record
	// (the strings of a record concatenated). Errors must be (or wrap) a
	// *net.DNSError: NXDOMAIN (IsNotFound) gives PermError (RFC 6376
	// section 6.1.2), a timeout or IsTemporary gives TempError. Any other
	// error is treated as temporary. If nil, every lookup fails
	// temporarily.
	LookupTXT func(ctx context.Context, name string) ([]string, error)
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
	// LookupTimeout, if positive, bounds each key lookup from when it
	// starts, so that the time the client takes to send the message does
	// not count against DNS.
	LookupTimeout time.Duration
	// Now is the clock for signature expiry (x=); if nil, time.Now.
	// go-msgauth also checks x= against its own time.Now, which cannot be
	// injected: a signature is reported expired if it has expired by either
	// clock.
	Now func() time.Time
}

// Verifier verifies the DKIM signatures of one message. Call AddHeader for
// each header field, EndHeaders, WriteBody for each body chunk, then Close;
// or Abort at any point. Its methods must not be called concurrently.
type Verifier struct {
	ctx    context.Context
	cancel context.CancelFunc
	opts   Options

	fields []headerField // the header fields so far, as the MTA delivered them
	sigs   []signature   // DKIM-Signature fields, in header order

	started bool           // EndHeaders called
	closed  bool           // Close or Abort called
	inline  []byte         // header and body so far, while not streaming
	pw      *io.PipeWriter // set once streaming
	blank   int            // length of the current run of white space and line breaks
	tooMuch bool           // the run exceeded MaxBlankRun; the body is no longer hashed
	done    chan struct{}  // closed when the verification goroutine ends
	verifs  []*msgauth.Verification
	verr    error
}

// headerField is one header field as the MTA delivered it.
type headerField struct{ name, value string }

// NewVerifier returns a Verifier for one message. DNS lookups use ctx (and
// stop when the Verifier is aborted or closed).
func NewVerifier(ctx context.Context, opts Options) *Verifier {
	if opts.MaxSignatures <= 0 {
		opts.MaxSignatures = DefaultMaxSignatures
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	ctx, cancel := context.WithCancel(ctx)
	return &Verifier{ctx: ctx, cancel: cancel, opts: opts}
}

// RebuildField returns the header field as it appeared in the message, with
// CRLF line ends: name, ":", the value with its bare-LF folding turned into
// CRLF, and a final CRLF. When leadingSpace is false the MTA removed the
// space after the colon, and a single space is put back; the original bytes
// are then unknown and only relaxed header canonicalization is sure to
// verify.
//
// Postfix delivers header values to milters with "\n" between the lines of
// a folded field, and with SMFIP_HDR_LEADSPC keeps the leading whitespace
// byte-exactly, so the field is rebuilt exactly as signed, which simple
// header canonicalization (RFC 6376 section 3.4.1) needs.
func RebuildField(name, value string, leadingSpace bool) string {
	var b strings.Builder
	b.Grow(len(name) + len(value) + 4 + strings.Count(value, "\n"))
	b.WriteString(name)
	if leadingSpace {
		b.WriteByte(':')
	} else {
		b.WriteString(": ")
	}
	for i := 0; i < len(value); i++ {
		c := value[i]
		if c == '\n' && (i == 0 || value[i-1] != '\r') {
			b.WriteByte('\r')
		}
		b.WriteByte(c)
	}
	b.WriteString("\r\n")
	return b.String()
}

// AddHeader adds the next header field, as delivered by the MTA.
func (v *Verifier) AddHeader(name, value string) {
	if v.started || v.closed {
		return
	}
	// Kept as delivered (the strings are shared with the caller, not
	// copied); the header is rebuilt only if a signature needs it.
	v.fields = append(v.fields, headerField{name, value})
	if strings.EqualFold(strings.TrimSpace(name), "DKIM-Signature") {
		v.sigs = append(v.sigs, parseSignature(value))
	}
}

// EndHeaders marks the end of the header. If it holds a DKIM-Signature
// field, the key lookups are prefetched and the header is kept for
// verification; otherwise the body is ignored.
func (v *Verifier) EndHeaders() error {
	if v.closed {
		return ErrClosed
	}
	if v.started {
		return nil
	}
	v.started = true
	fields := v.fields
	v.fields = nil
	if len(v.sigs) == 0 {
		return nil
	}
	if v.opts.Prefetch != nil {
		for i, sig := range v.sigs {
			if i < v.opts.MaxSignatures && sig.selector != "" && sig.domain != "" {
				v.opts.Prefetch(sig.selector + "._domainkey." + sig.domain)
			}
		}
	}
	n := 2
	for _, f := range fields {
		n += len(f.name) + len(f.value) + 4 + strings.Count(f.value, "\n")
	}
	v.inline = make([]byte, 0, n+8<<10)
	for _, f := range fields {
		v.inline = append(v.inline, RebuildField(f.name, f.value, v.opts.LeadingSpace)...)
	}
	v.inline = append(v.inline, "\r\n"...)
	return nil
}

// verify runs go-msgauth's verifier over r, the whole message, and records
// its outcome.
func (v *Verifier) verify(r io.Reader) {
	defer func() {
		// A library panic on a hostile message must not take the daemon
		// down; the same message would panic again, so the result is
		// permanent.
		if p := recover(); p != nil {
			v.verifs, v.verr = nil, fmt.Errorf("%w: %v", errVerifierPanic, p)
		}
	}()
	v.verifs, v.verr = msgauth.VerifyWithOptions(r, &msgauth.VerifyOptions{
		LookupTXT:        v.lookupTXT,
		MaxVerifications: v.opts.MaxSignatures,
	})
}

// stream starts verification in a goroutine reading from a pipe, and
// writes what was kept so far into it.
func (v *Verifier) stream() error {
	pr, pw := io.Pipe()
	v.pw = pw
	v.done = make(chan struct{})
	go func() {
		defer close(v.done)
		v.verify(pr)
		// "There is no guarantee that the reader will be completely
		// consumed" (and a panic leaves it half read): drain it so that
		// WriteBody and Close never block.
		_, _ = io.Copy(io.Discard, pr)
	}()
	kept := v.inline
	v.inline = nil
	return v.pipe(kept)
}

// pipe writes b to the streaming verifier. io.Pipe hands b to the reader,
// which copies it, and returns only once all of it has been read.
// go-msgauth's canonicalizers allocate a copy of every write: in pieces of
// pipePiece bytes those copies come from small size classes that are reused
// at once, instead of 64 KiB spans that make the resident size of a large
// message grow.
func (v *Verifier) pipe(b []byte) error {
	for len(b) > 0 {
		n := min(len(b), pipePiece)
		if _, err := v.pw.Write(b[:n]); err != nil {
			return fmt.Errorf("dkim: passing message to verifier: %w", err)
		}
		b = b[n:]
	}
	return nil
}

// WriteBody passes the next body chunk to the verifier. It may block until
// the chunk is hashed (the first chunk also waits for the key lookups); it
// does not keep chunk after it returns.
//
// Chunks are passed on as they are: go-msgauth's body canonicalization turns
// a lone LF into CRLF and keeps its state across writes, so a CRLF split
// between two chunks is seen as one line end.
func (v *Verifier) WriteBody(chunk []byte) error {
	if v.closed {
		return ErrClosed
	}
	if !v.started {
		if err := v.EndHeaders(); err != nil {
			return err
		}
	}
	if len(v.sigs) == 0 || len(chunk) == 0 || v.tooMuch {
		return nil
	}
	// The run of white space and line breaks at the end of what was
	// written so far: scan back from the chunk's end only.
	i := len(chunk) - 1
	for i >= 0 && (chunk[i] == ' ' || chunk[i] == '\t' || chunk[i] == '\r' || chunk[i] == '\n') {
		i--
	}
	if i < 0 {
		v.blank += len(chunk)
	} else {
		v.blank = len(chunk) - 1 - i
	}
	if v.blank > MaxBlankRun {
		// Stop here: the library would buffer the whole run.
		v.tooMuch = true
		v.inline = nil
		if v.pw != nil {
			_ = v.pw.Close()
			<-v.done
		}
		return nil
	}
	if v.pw == nil {
		if len(v.inline)+len(chunk) <= InlineMax {
			v.inline = append(v.inline, chunk...)
			return nil
		}
		if err := v.stream(); err != nil {
			return err
		}
	}
	return v.pipe(chunk)
}

// Close ends the message and returns one Result per DKIM-Signature field, in
// header order; none when the header had no DKIM-Signature.
func (v *Verifier) Close() []Result {
	if v.closed {
		return nil
	}
	if !v.started {
		_ = v.EndHeaders()
	}
	v.closed = true
	defer v.cancel()
	switch {
	case len(v.sigs) == 0:
		return nil
	case v.pw != nil:
		_ = v.pw.Close()
		<-v.done
	case !v.tooMuch:
		v.verify(bytes.NewReader(v.inline))
	}
	results := v.results()
	if v.tooMuch {
		for i := range results {
			results[i].Status, results[i].Err = PermError, ErrBlankRun
		}
	}
	v.verifs, v.sigs, v.pw, v.inline = nil, nil, nil, nil
	return results
}

// Abort stops verification and releases the message. It waits for the
// verification goroutine, whose key lookups are cancelled, to end.
func (v *Verifier) Abort() {
	if v.closed {
		return
	}
	v.closed = true
	v.cancel()
	if v.pw != nil {
		// End the body with EOF rather than CloseWithError: on a read
		// error go-msgauth's parallel verification (two or more
		// signatures) returns without closing its own pipes, leaving its
		// per-signature goroutines blocked forever. At EOF it finishes
		// normally: a truncated body fails its body hash without any
		// public-key operation.
		_ = v.pw.Close()
		<-v.done
	}
	v.fields, v.sigs, v.verifs, v.pw, v.inline = nil, nil, nil, nil, nil
}

// lookupTXT adapts Options.LookupTXT to go-msgauth, which has no context
// parameter and classifies errors by asserting net.Error (not errors.As) and
// calling Temporary.
func (v *Verifier) lookupTXT(name string) ([]string, error) {
	if v.opts.LookupTXT == nil {
		return nil, &net.DNSError{Err: "no resolver configured", Name: name, IsTemporary: true}
	}
	ctx := v.ctx
	if v.opts.LookupTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, v.opts.LookupTimeout)
		defer cancel()
	}
	txts, err := v.opts.LookupTXT(ctx, name)
	if err == nil {
		return txts, nil
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return nil, dnsErr
	}
	// RFC 6376 section 6.1.2: a key query that fails to respond may be
	// retried later, so anything but a DNS answer is temporary.
	return nil, &net.DNSError{Err: err.Error(), Name: name, IsTemporary: true}
}

// results maps go-msgauth's verifications to Results, one per signature.
func (v *Verifier) results() []Result {
	results := make([]Result, len(v.sigs))
	now := v.opts.Now()
	for i, sig := range v.sigs {
		r := &results[i]
		r.Domain = sig.domain
		r.Selector = sig.selector
		r.Identifier = sig.identifier
		r.Algorithm = sig.algorithm
		r.BPrefix = sig.bprefix

		switch {
		case i >= v.opts.MaxSignatures:
			r.Status, r.Err = PermError, ErrTooManySignatures
		case errors.Is(v.verr, errVerifierPanic):
			r.Status, r.Err = PermError, v.verr
		case v.verr != nil && !errors.Is(v.verr, msgauth.ErrTooManySignatures):
			// An error that is none of temp, perm or signature failure,
			// e.g. the header could not be read.
			r.Status, r.Err = TempError, v.verr
		case i >= len(v.verifs):
			r.Status, r.Err = TempError, errors.New("dkim: signature not verified")
		default:
			r.Status, r.Err = status(v.verifs[i].Err, sig)
			if vf := v.verifs[i]; vf.Domain != "" {
				r.Domain, r.Identifier = vf.Domain, vf.Identifier
			}
		}
		// RFC 6376 section 3.5: x= is an absolute expiry; see Options.Now.
		if !sig.expires.IsZero() && now.After(sig.expires) && r.Status != PermError {
			r.Status, r.Err = PermError, ErrExpired
		}
	}
	return results
}

// status maps a go-msgauth verification error to a result value.
func status(err error, sig signature) (Status, error) {
	switch {
	case err == nil:
		return Pass, nil
	case msgauth.IsTempFail(err):
		return TempError, err
	case msgauth.IsPermFail(err):
		// Malformed signature or key record, key missing (NXDOMAIN) or
		// revoked, rsa-sha1, RSA key shorter than 1024 bits.
		return PermError, err
	case sig.hasL:
		// go-msgauth refuses l= (body length, RFC 6376 section 8.2) with a
		// plain failure; it is the verifier's policy, not a bad signature.
		return Policy, err
	default:
		// Body hash or signature mismatch.
		return Fail, err
	}
}

// signature holds the DKIM-Signature tags a Result reports, which
// go-msgauth's Verification lacks.
type signature struct {
	domain, selector, identifier, algorithm, bprefix string
	expires                                          time.Time
	hasL                                             bool
}

// parseSignature reads the tag list (RFC 6376 section 3.2) of a
// DKIM-Signature value. It is lenient: validation is go-msgauth's.
func parseSignature(value string) signature {
	var sig signature
	var hasI bool
	for spec := range strings.SplitSeq(value, ";") {
		name, val, ok := strings.Cut(spec, "=")
		if !ok {
			continue
		}
		val = stripFWS(val)
		switch strings.TrimSpace(name) {
		case "d":
			sig.domain = val
		case "s":
			sig.selector = val
		case "i":
			sig.identifier, hasI = val, true
		case "a":
			sig.algorithm = val
		case "b":
			sig.bprefix = val[:min(8, len(val))]
		case "l":
			sig.hasL = true
		case "x":
			if sec, err := strconv.ParseInt(val, 10, 64); err == nil {
				sig.expires = time.Unix(sec, 0)
			}
		}
	}
	if !hasI {
		sig.identifier = "@" + sig.domain
	}
	return sig
}

// stripFWS removes folding whitespace, which RFC 6376 section 3.2 allows
// anywhere in tag values of base64 and most other tags.
func stripFWS(s string) string {
	return strings.Map(func(r rune) rune {
		switch r {
		case ' ', '\t', '\r', '\n':
			return -1
		}
		return r
	}, s)
}
