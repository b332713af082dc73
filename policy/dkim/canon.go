package dkim

import (
	"crypto"
	"hash"
	"strings"

	"github.com/dmarc-milter/dmarc-milter/internal/rfc5322"
)

// canonHeader appends the canonical form of one header field, given as it
// appeared in the message (name, ":", value, CRLF), to b (RFC 6376
// section 3.4.1 simple, 3.4.2 relaxed).
func canonHeader(b []byte, c canon, field string) []byte {
	if c == canonSimple {
		return append(b, field...)
	}
	name, value, _ := strings.Cut(field, ":")
	// Relaxed: lower-case name, no white space around the colon, the value
	// unfolded, runs of white space made one space, none at the end.
	for _, c := range []byte(trimWSP(name)) {
		b = append(b, lowerASCII(c))
	}
	b = append(b, ':')
	space := false
	started := false
	for i := 0; i < len(value); i++ {
		switch ch := value[i]; ch {
		case '\r', '\n':
			// Unfolding: line breaks are removed (the white space after
			// them stays, and is reduced below).
		case ' ', '\t':
			space = true
		default:
			if space && started {
				b = append(b, ' ')
			}
			space = false
			started = true
			b = append(b, ch)
		}
	}
	return append(b, '\r', '\n')
}

func trimWSP(s string) string { return strings.Trim(s, " \t") }

// headerHash computes the data hash of the header for sig (RFC 6376
// sections 3.7 and 5.4.2): the fields named in h=, each the last one of
// that name not yet used (a name with no field left adds nothing), then
// the DKIM-Signature field itself with an empty b= value and without its
// final CRLF.
func headerHash(sig *signature, hdr *header, sigField string) []byte {
	h := sig.hash.New()
	next := map[string]int32{} // name -> its next field to take, from the bottom; -1: none left
	sigField = stripB(sigField)
	// Room for the signature field, which is most often the longest.
	buf := make([]byte, 0, len(sigField))
	for _, name := range sig.headers {
		i, ok := next[name]
		if !ok {
			if i, ok = hdr.last[name]; !ok {
				i = -1
			}
		}
		if i < 0 {
			continue
		}
		next[name] = hdr.prev[i]
		buf = canonHeader(buf[:0], sig.headerCanon, hdr.raw[i])
		h.Write(buf)
	}
	buf = canonHeader(buf[:0], sig.headerCanon, sigField)
	buf = buf[:len(buf)-2] // without the CRLF
	h.Write(buf)
	return h.Sum(nil)
}

// header is the message header as signatures are computed over it: each
// field rebuilt as in the message, and an index by lower-case name, so
// that choosing the fields a signature names costs one look-up each,
// however long the header.
type header struct {
	raw  []string         // the fields as in the message, in one buffer
	last map[string]int32 // lower-case name -> index of its last field
	prev []int32          // index of the field of the same name before, -1 if none
}

func newHeader(fields []rfc5322.Field, leadingSpace bool) *header {
	size := 0
	for _, f := range fields {
		size += len(f.Name) + len(f.Value) + 4
	}
	var b strings.Builder
	b.Grow(size + 64) // room for some bare LFs made CRLF
	ends := make([]int, len(fields))
	hdr := &header{raw: make([]string, len(fields)), last: make(map[string]int32, len(fields)), prev: make([]int32, len(fields))}
	for i, f := range fields {
		rfc5322.WriteField(&b, f.Name, f.Value, leadingSpace)
		ends[i] = b.Len()
		n := lowerName(strings.TrimRight(f.Name, " \t"))
		if j, ok := hdr.last[n]; ok {
			hdr.prev[i] = j
		} else {
			hdr.prev[i] = -1
		}
		hdr.last[n] = int32(i)
	}
	all, start := b.String(), 0
	for i, end := range ends {
		hdr.raw[i], start = all[start:end], end
	}
	return hdr
}

// commonNames are the lower-case names of the header fields signatures
// usually name, which lowerName returns without allocating. Read only.
var commonNames = [...]string{
	"from", "to", "cc", "subject", "date", "message-id", "mime-version",
	"content-type", "content-transfer-encoding", "reply-to", "in-reply-to",
	"references", "sender", "list-id", "list-unsubscribe",
	"list-unsubscribe-post", "feedback-id", "dkim-signature", "received",
	"return-path", "authentication-results", "arc-seal",
	"arc-message-signature", "arc-authentication-results",
}

// lowerName returns the header field name s in lower case (field names are
// ASCII: RFC 5322 section 3.6.8).
func lowerName(s string) string {
	for _, n := range commonNames {
		if len(n) == len(s) && equalFoldASCII(n, s) {
			return n
		}
	}
	return strings.ToLower(s)
}

// equalFoldASCII reports whether a and b are equal under ASCII case
// folding (and only ASCII's).
func equalFoldASCII(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		if lowerASCII(a[i]) != lowerASCII(b[i]) {
			return false
		}
	}
	return true
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// stripB returns the DKIM-Signature field with the value of its b= tag
// removed (RFC 6376 section 3.5: b= is treated as the empty string), all
// else byte for byte.
func stripB(field string) string {
	colon := strings.IndexByte(field, ':')
	pos := colon + 1
	for pos <= len(field) {
		end := strings.IndexByte(field[pos:], ';')
		if end < 0 {
			end = len(field) - pos
		}
		spec := field[pos : pos+end]
		if name, _, ok := strings.Cut(spec, "="); ok && trimFWS(name) == "b" {
			eq := pos + strings.IndexByte(spec, '=') + 1
			rest := field[pos+end:]
			if !strings.Contains(rest, ";") {
				// The last tag: keep the field's final line break.
				return field[:eq] + "\r\n"
			}
			return field[:eq] + rest
		}
		pos += end + 1
	}
	return field
}

// bodyHash canonicalizes a body as it streams (RFC 6376 sections 3.4.3
// and 3.4.4) and hashes it, up to an l= limit. Runs of empty lines are
// counted, not buffered, so memory does not grow with the body: they are
// written out only when a non-empty line follows, as trailing empty lines
// are not hashed.
//
// Content is taken in runs: the bytes between two that canonicalization
// looks at (line ends, and for relaxed white space) are copied into one
// buffer, or hashed in place when long, never handled byte by byte.
type bodyHash struct {
	c     canon
	alg   crypto.Hash
	h     hash.Hash
	stop  *[256]bool // the bytes that end a run of content under c
	limit int64      // l=, -1 for none
	n     int64      // canonical bytes so far (hashed or beyond the limit)

	out      []byte // canonical bytes waiting to be hashed, in buf
	buf      [512]byte
	empty    int64 // empty lines held back
	inLine   bool  // the current line has content
	space    bool  // relaxed: white space held back within the line
	cr       bool  // a CR was read, maybe the start of a CRLF
	finished []byte
}

// runEnds are, for each body canonicalization, the bytes that end a run
// of content. Read only.
var runEnds = func() (t [2][256]bool) {
	for _, c := range []canon{canonSimple, canonRelaxed} {
		t[c]['\r'], t[c]['\n'] = true, true
	}
	t[canonRelaxed][' '], t[canonRelaxed]['\t'] = true, true
	return t
}()

// crlf and sp are canonical bytes to emit. Read only.
var crlf, sp = []byte("\r\n"), []byte(" ")

func newBodyHash(c canon, h crypto.Hash, limit int64) *bodyHash {
	b := &bodyHash{c: c, alg: h, h: h.New(), stop: &runEnds[c], limit: limit}
	b.out = b.buf[:0]
	return b
}

// Write canonicalizes p. A line ends at CRLF or at a lone LF (which the
// MTA may deliver); a lone CR is content.
func (b *bodyHash) Write(p []byte) {
	for i := 0; i < len(p); {
		if b.cr {
			b.cr = false
			if p[i] == '\n' {
				b.endLine()
				i++
				continue
			}
			b.content(crlf[:1])
		}
		j := i
		for j < len(p) {
			if !b.stop[p[j]] {
				j++
				continue
			}
			// Relaxed: one SP before content is canonical as it is,
			// unless it continues white space held back.
			if p[j] == ' ' && b.c == canonRelaxed && j+1 < len(p) && !b.stop[p[j+1]] && (j > i || !b.space) {
				j += 2
				continue
			}
			break
		}
		if j > i {
			b.content(p[i:j])
			if i = j; i == len(p) {
				break
			}
		}
		switch p[i] {
		case '\r':
			b.cr = true
		case '\n':
			b.endLine()
		default: // white space, relaxed
			b.space = true
		}
		i++
	}
	b.flush()
}

// content adds a run of line content, after the empty lines and the white
// space held back before it.
func (b *bodyHash) content(run []byte) {
	if !b.inLine {
		for ; b.empty > 0; b.empty-- {
			b.emit(crlf)
		}
		b.inLine = true
	}
	if b.space {
		b.emit(sp)
		b.space = false
	}
	b.emit(run)
}

func (b *bodyHash) endLine() {
	// Relaxed: white space at the end of a line is dropped, and a line
	// of only white space is empty.
	b.space = false
	if b.inLine {
		b.emit(crlf)
		b.inLine = false
	} else {
		b.empty++
	}
}

// emit adds canonical bytes, copied into the buffer, or hashed in place
// if they would fill most of it.
func (b *bodyHash) emit(s []byte) {
	if len(b.out)+len(s) > len(b.buf) {
		b.flush()
		if len(s) > len(b.buf)/2 {
			b.hash(s)
			return
		}
	}
	b.out = append(b.out, s...)
}

// flush hashes what is waiting.
func (b *bodyHash) flush() {
	b.hash(b.out)
	b.out = b.buf[:0]
}

// hash hashes canonical bytes, up to the limit.
func (b *bodyHash) hash(out []byte) {
	before := b.n
	b.n += int64(len(out))
	if b.limit >= 0 {
		if room := b.limit - before; room < int64(len(out)) {
			out = out[:max(room, 0)]
		}
	}
	if len(out) > 0 {
		b.h.Write(out)
	}
}

// Sum ends the body and returns its hash and canonical length.
func (b *bodyHash) Sum() ([]byte, int64) {
	if b.finished != nil {
		return b.finished, b.n
	}
	if b.cr {
		b.cr = false
		b.content(crlf[:1])
	}
	b.space = false
	if b.inLine {
		// A body not ending in CRLF gets one.
		b.emit(crlf)
		b.inLine = false
	}
	if b.c == canonSimple && b.n+int64(len(b.out)) == 0 {
		// Simple: an empty body is one CRLF (section 3.4.3).
		b.emit(crlf)
	}
	b.flush()
	b.finished = b.h.Sum(nil)
	return b.finished, b.n
}
