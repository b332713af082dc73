package dkim

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
	"github.com/dmarc-milter/dmarc-milter/internal/rfc5322"
)

// FuzzVerify feeds hostile signatures, key records, headers and bodies
// through the whole Verifier: it must never panic (Close turns a panic
// into permerror, so the test checks that this never happened), and every
// signature gets exactly one result.
func FuzzVerify(f *testing.F) {
	f.Add("v=1; a=rsa-sha256; d=example.org; s=s; h=from; bh=YQ==; b=YQ==", "v=DKIM1; p=YQ==", "From: a@example.org", "body\r\n", uint8(3))
	f.Add("v=1; a=ed25519-sha256; c=relaxed/relaxed; d=example.org; s=s; h=from:from:to; i=a=40EXAMPLE.org; l=3; t=1; x=2; bh=; b=",
		"v=DKIM1; k=ed25519; t=s:y; h=sha256; p=G99n/xBJrwrWBHRzSmdHlx6KbOdldB6dOMDbL5FNnxU=", "From: a@example.org\nTo: b", " \t\r\n\r\n\n \r", uint8(1))
	f.Add("b=; b=", "v=DKIM2;", "X:\r\n\t", "\r", uint8(0))
	f.Fuzz(func(t *testing.T, sig, key, header, body string, chunk uint8) {
		z := &dnstest.Resolver{TXT: map[string][]string{"s._domainkey.example.org": {key}}}
		v := NewVerifier(Options{LookupTXT: z.LookupTXT, LeadingSpace: chunk%2 == 0,
			Now: func() time.Time { return time.Unix(1700000000, 0) }})
		fields := []rfc5322.Field{{Name: "DKIM-Signature", Value: sig}}
		for _, line := range strings.Split(header, "\n") {
			name, value, _ := strings.Cut(line, ":")
			fields = append(fields, rfc5322.Field{Name: name, Value: value})
		}
		if err := v.EndHeaders(fields); err != nil {
			t.Fatal(err)
		}
		n := int(chunk) + 1
		for b := []byte(body); len(b) > 0; b = b[min(n, len(b)):] {
			if err := v.WriteBody(b[:min(n, len(b))]); err != nil {
				t.Fatal(err)
			}
		}
		results := v.Close(context.Background())
		if len(results) < 1 {
			t.Fatalf("%d results for a message with a DKIM-Signature", len(results))
		}
		for _, r := range results {
			if errors.Is(r.Err, errVerifierPanic) {
				t.Fatalf("verifier panicked: %v", r.Err)
			}
			if r.Status == "" {
				t.Fatalf("empty status: %+v", r)
			}
		}
	})
}

// FuzzCanonicalization checks the streaming body canonicalizers against
// referenceBody, a plain model of RFC 6376 sections 3.4.3 and 3.4.4, for
// any input, any chunking and any l= limit; and properties that must
// hold whatever the model says: relaxed output has no white space before
// a line end and no empty lines at the end.
func FuzzCanonicalization(f *testing.F) {
	f.Add("a \t b \r\n\r\n", uint8(1), int16(-1))
	f.Add("\r\r\n\n \n\t\r", uint8(2), int16(3))
	f.Add(strings.Repeat("x", 700)+" \r\n"+strings.Repeat("y ", 300)+"\n\n", uint8(200), int16(900))
	f.Add("", uint8(0), int16(0))
	f.Fuzz(func(t *testing.T, body string, chunk uint8, limit int16) {
		l := max(int64(limit), -1)
		for _, c := range []canon{canonSimple, canonRelaxed} {
			want := referenceBody(c, body)
			if l >= 0 && int64(len(want)) > l {
				want = want[:l]
			}
			whole := canonical(c, []byte(body), len(body)+1, l)
			cut := canonical(c, []byte(body), int(chunk)+1, l)
			if !bytes.Equal(whole, want) || !bytes.Equal(cut, want) {
				t.Fatalf("c=%d l=%d: %q in one chunk gives %q, in chunks of %d %q; the model says %q", c, l, body, whole, int(chunk)+1, cut, want)
			}
			if all := canonical(c, []byte(body), len(body)+1, -1); c == canonRelaxed && (bytes.Contains(all, []byte(" \r\n")) || bytes.HasSuffix(all, []byte("\r\n\r\n"))) {
				t.Fatalf("relaxed %q", all)
			}
		}
	})
}

// referenceBody is the canonical body by the letter of RFC 6376, one rule
// at a time over the whole body (lines end at CRLF or a lone LF, as
// bodyHash reads them).
func referenceBody(c canon, body string) []byte {
	body = strings.ReplaceAll(body, "\r\n", "\n")
	lines := strings.Split(body, "\n")
	if lines[len(lines)-1] == "" {
		// The body ends with a line end, or is empty.
		lines = lines[:len(lines)-1]
	}
	if c == canonRelaxed {
		for i, line := range lines {
			// Section 3.4.4: WSP at line ends is ignored, and runs of
			// WSP within a line become one SP.
			line = strings.TrimRight(line, " \t")
			var b []byte
			inWSP := false
			for j := 0; j < len(line); j++ {
				wsp := line[j] == ' ' || line[j] == '\t'
				if !wsp {
					b = append(b, line[j])
				} else if !inWSP {
					b = append(b, ' ')
				}
				inWSP = wsp
			}
			lines[i] = string(b)
		}
	}
	// Empty lines at the end are ignored (sections 3.4.3 and 3.4.4).
	for len(lines) > 0 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	var out []byte
	for _, line := range lines {
		out = append(out, line...)
		out = append(out, "\r\n"...)
	}
	if c == canonSimple && len(out) == 0 {
		// Simple: an empty body is one CRLF.
		out = []byte("\r\n")
	}
	return out
}

// canonical returns the canonical body up to limit (-1: none), fed in
// chunks of n bytes, through a hash that records what it is given.
func canonical(c canon, body []byte, n int, limit int64) []byte {
	b := newBodyHash(c, crypto.SHA256, limit)
	rec := &recorder{}
	b.h = rec
	for len(body) > 0 {
		k := min(n, len(body))
		b.Write(body[:k])
		body = body[k:]
	}
	b.Sum()
	return rec.Bytes()
}

// recorder is a hash.Hash that keeps what it is given.
type recorder struct{ bytes.Buffer }

func (r *recorder) Sum(b []byte) []byte { return append(b, r.Bytes()...) }
func (r *recorder) Size() int           { return 0 }
func (r *recorder) BlockSize() int      { return 1 }

// BenchmarkBodyHash is the body canonicalization and hash of a 4 KiB text
// body, as a 1 KiB chunk stream.
func BenchmarkBodyHash(b *testing.B) {
	line := "The quick brown fox jumps over the lazy dog,  again\tand again.\r\n"
	body := []byte(strings.Repeat(line, 4096/len(line)) + "\r\n\r\n")
	for _, c := range []struct {
		name  string
		canon canon
	}{{"simple", canonSimple}, {"relaxed", canonRelaxed}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				h := newBodyHash(c.canon, crypto.SHA256, -1)
				for p := body; len(p) > 0; p = p[min(1024, len(p)):] {
					h.Write(p[:min(1024, len(p))])
				}
				h.Sum()
			}
		})
	}
}
