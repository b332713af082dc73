// Package testutil holds the helpers the tests of several packages share,
// written once: a buffer safe for concurrent writers (log output of
// sessions and senders), the PEM key loader of the DKIM test keys, a
// DKIM signer over go-msgauth, an ARC sealer (dkimpy), a small tmpfs that
// can be filled (SmallDisk) and a free loopback port (FreeAddr). It does not import testing: a TB is what it
// needs of a test.
package testutil

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"os"
	"strings"
	"sync"
	"time"

	msgdkim "github.com/emersion/go-msgauth/dkim"
)

// TB is what the helpers need of a *testing.T or *testing.B.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
}

// SyncBuffer is a bytes.Buffer safe for concurrent writers.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what was written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// LoadKey reads a PKCS #8 private key in PEM (the keys under testdata).
func LoadKey(t TB, path string) crypto.Signer {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v", err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s: no PEM block", path)
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		t.Fatalf("%s: a %T, not a signing key", path, key)
	}
	return signer
}

// Sign adds a DKIM-Signature for domain and selector to raw (a CRLF
// message) with go-msgauth's signer and the key at keyPath, over From, To,
// Subject, Date and Message-ID.
func Sign(t TB, raw, domain, selector, keyPath string, canon msgdkim.Canonicalization) string {
	t.Helper()
	var out bytes.Buffer
	opts := &msgdkim.SignOptions{
		Domain:                 domain,
		Selector:               selector,
		Signer:                 LoadKey(t, keyPath),
		HeaderCanonicalization: canon,
		BodyCanonicalization:   canon,
		HeaderKeys:             []string{"From", "To", "Subject", "Date", "Message-ID"},
	}
	if err := msgdkim.Sign(&out, strings.NewReader(raw), opts); err != nil {
		t.Fatalf("sign: %v", err)
	}
	return out.String()
}

// Clock is a settable clock, safe for concurrent use; its Now is a
// func() time.Time for the packages that take a clock.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// NewClock returns a Clock at t.
func NewClock(t time.Time) *Clock { return &Clock{t: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock on by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// Set sets the clock to t.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

// WaitFor polls cond every few milliseconds until it holds, and fails the
// test after 10 seconds: for what a background worker does by itself.
func WaitFor(t TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
