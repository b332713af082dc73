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
		v := NewVerifier(context.Background(), Options{LookupTXT: z.LookupTXT, LeadingSpace: chunk%2 == 0,
			Now: func() time.Time { return time.Unix(1700000000, 0) }})
		v.AddHeader("DKIM-Signature", sig)
		for _, line := range strings.Split(header, "\n") {
			name, value, _ := strings.Cut(line, ":")
			v.AddHeader(name, value)
		}
		if err := v.EndHeaders(); err != nil {
			t.Fatal(err)
		}
		n := int(chunk) + 1
		for b := []byte(body); len(b) > 0; b = b[min(n, len(b)):] {
			if err := v.WriteBody(b[:min(n, len(b))]); err != nil {
				t.Fatal(err)
			}
		}
		results := v.Close()
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

// FuzzCanonicalization checks properties of the body canonicalizers that
// must hold for any input and any chunking: the result does not depend on
// how the body is cut, and relaxed output has no white space before a line
// end and no empty lines at the end.
func FuzzCanonicalization(f *testing.F) {
	f.Add("a \t b \r\n\r\n", uint8(1))
	f.Add("\r\r\n\n \n\t\r", uint8(2))
	f.Fuzz(func(t *testing.T, body string, chunk uint8) {
		for _, c := range []canon{canonSimple, canonRelaxed} {
			whole := canonical(c, []byte(body), len(body)+1)
			cut := canonical(c, []byte(body), int(chunk)+1)
			if !bytes.Equal(whole, cut) {
				t.Fatalf("c=%d: chunking changed the result: %q vs %q", c, whole, cut)
			}
			if c == canonRelaxed && (bytes.Contains(whole, []byte(" \r\n")) || bytes.HasSuffix(whole, []byte("\r\n\r\n"))) {
				t.Fatalf("relaxed %q", whole)
			}
		}
	})
}

// canonical returns the canonical body, fed in chunks of n bytes, through
// a hash that records what it is given.
func canonical(c canon, body []byte, n int) []byte {
	b := newBodyHash(c, crypto.SHA256, -1)
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
