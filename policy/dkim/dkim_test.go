package dkim

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"math/big"
	"net"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	msgauth "github.com/emersion/go-msgauth/dkim"

	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
	"github.com/dmarc-milter/dmarc-milter/internal/rfc5322"
	"github.com/dmarc-milter/dmarc-milter/internal/testutil"
)

// field is a header field as the MTA delivers it to a milter.
type field = rfc5322.Field

// splitMessage splits a message (CRLF or LF line ends) into header fields as
// Postfix sends them to a milter, and the body: values keep their folding
// as bare LF, and keep the leading whitespace only when leadingSpace
// (SMFIP_HDR_LEADSPC); otherwise one leading space is removed.
func splitMessage(raw []byte, leadingSpace bool) ([]field, []byte) {
	var fields []field
	var body []byte
	rest := raw
	for len(rest) > 0 {
		line := rest
		next := []byte(nil)
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			line, next = rest[:i], rest[i+1:]
		}
		rest = next
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) == 0 {
			body = rest
			break
		}
		if (line[0] == ' ' || line[0] == '\t') && len(fields) > 0 {
			fields[len(fields)-1].Value += "\n" + string(line)
			continue
		}
		name, value, _ := strings.Cut(string(line), ":")
		fields = append(fields, field{Name: name, Value: value})
	}
	if !leadingSpace {
		for i := range fields {
			fields[i].Value = strings.TrimPrefix(fields[i].Value, " ")
		}
	}
	return fields, body
}

// feed drives v as the milter would, the body in chunks whose sizes cycle
// through sizes, and closes it.
func feed(t testing.TB, v *Verifier, fields []field, body []byte, sizes []int) []Result {
	t.Helper()
	write(t, v, fields, body, sizes)
	return v.Close(context.Background())
}

// write is feed without the Close. Each chunk lives in one reused buffer
// that is overwritten after WriteBody returns, which catches a verifier that
// keeps it.
func write(t testing.TB, v *Verifier, fields []field, body []byte, sizes []int) {
	t.Helper()
	if err := v.EndHeaders(fields); err != nil {
		t.Fatalf("EndHeaders: %v", err)
	}
	buf := make([]byte, 0, 64<<10)
	for i := 0; len(body) > 0; i++ {
		n := min(sizes[i%len(sizes)], len(body))
		buf = append(buf[:0], body[:n]...)
		body = body[n:]
		if err := v.WriteBody(buf); err != nil {
			t.Fatalf("WriteBody: %v", err)
		}
		for j := range buf {
			buf[j] = 'X'
		}
	}
}

var chunkSizes = [][]int{{1}, {2, 3, 5, 7}, {64 << 10}, {13, 1, 4096, 2}}

func loadKey(t testing.TB, name string) crypto.Signer {
	t.Helper()
	return testutil.LoadKey(t, filepath.Join("..", "..", "testdata", "dkim", name))
}

// keyRecord returns the DKIM key record (RFC 6376 section 3.6.1) of pub.
func keyRecord(t testing.TB, pub crypto.PublicKey) string {
	t.Helper()
	switch pub := pub.(type) {
	case ed25519.PublicKey:
		return "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub)
	case *rsa.PublicKey:
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der)
	}
	t.Fatalf("unexpected key type %T", pub)
	return ""
}

// testMessage has folded fields, a field without a space after the colon,
// runs of whitespace and trailing empty lines, so that simple and relaxed
// canonicalization give different results.
const testMessage = "From: Alice Example\r\n <alice@example.org>\r\n" +
	"To:bob@example.net\r\n" +
	"Subject:  Folded\r\n\t subject  with   spaces \r\n" +
	"Date: Sat, 01 Mar 2025 10:00:00 +0000\r\n" +
	"Message-ID: <m1@example.org>\r\n" +
	"\r\n" +
	"Hello Bob,\r\n\r\n  some   spaced   text \t \r\nbye\r\n\r\n\r\n"

var signedFields = []string{"From", "To", "Subject", "Date", "Message-ID"}

// sign signs msg with go-msgauth and returns the signed message.
func sign(t testing.TB, msg string, opts *msgauth.SignOptions) []byte {
	t.Helper()
	if opts.HeaderKeys == nil {
		opts.HeaderKeys = signedFields
	}
	var b bytes.Buffer
	if err := msgauth.Sign(&b, strings.NewReader(msg), opts); err != nil {
		t.Fatalf("sign: %v", err)
	}
	return b.Bytes()
}

// signManual makes a c=simple/simple signature by hand, for what go-msgauth
// refuses to sign: rsa-sha1 and l=. extra is added to the tag list.
func signManual(t testing.TB, msg string, key *rsa.PrivateKey, hash crypto.Hash, algo, domain, selector, extra string) []byte {
	t.Helper()
	header, body, _ := strings.Cut(msg, "\r\n\r\n")
	header += "\r\n"
	// RFC 6376 section 3.4.3: remove trailing empty lines, end with CRLF.
	body = strings.TrimRight(body, "\r\n") + "\r\n"
	h := hash.New()
	h.Write([]byte(body))
	sig := fmt.Sprintf("DKIM-Signature: v=1; a=%s; c=simple/simple; d=%s; s=%s;\r\n h=from:subject:date;%s bh=%s;\r\n b=",
		algo, domain, selector, extra, base64.StdEncoding.EncodeToString(h.Sum(nil)))
	h.Reset()
	for _, name := range []string{"From", "Subject", "Date"} {
		for _, f := range strings.SplitAfter(header, "\r\n") {
			if strings.HasPrefix(f, name+":") {
				// Fields in this message are not folded.
				h.Write([]byte(f))
			}
		}
	}
	h.Write([]byte(sig))
	b, err := rsa.SignPKCS1v15(nil, key, hash, h.Sum(nil))
	if err != nil {
		t.Fatalf("sign %s: %v", algo, err)
	}
	return []byte(sig + base64.StdEncoding.EncodeToString(b) + "\r\n" + msg)
}

const unfoldedMessage = "From: alice@example.org\r\n" +
	"Subject: hello\r\n" +
	"Date: Sat, 01 Mar 2025 10:00:00 +0000\r\n" +
	"\r\n" +
	"Hello.\r\n"

func TestParseSignature(t *testing.T) {
	now := time.Unix(1600000000, 0)
	got := parseSignature(" v=1; a = rsa-sha256 ; d=example.org; h=From:To;\n\ts=sel; l=10; x=1700000000;\n\tb=abcd efgh\n\t ijkl; bh=xyz=", now, false)
	if got.err != nil {
		t.Fatalf("parseSignature: %v", got.err)
	}
	if got.domain != "example.org" || got.selector != "sel" || got.identifier != "@example.org" || got.algorithm != "rsa-sha256" ||
		got.bprefix != "abcdefgh" || got.length != 10 || !got.expires.Equal(time.Unix(1700000000, 0)) ||
		!slices.Equal(got.headers, []string{"from", "to"}) || got.keyName != "sel._domainkey.example.org" {
		t.Errorf("parseSignature = %+v", got)
	}
	if got := parseSignature("v=1; a=rsa-sha256; h=from; s=s; bh=YQ==; i=user@sub.example.org; d=example.org; b=YWI=", now, false); got.err != nil ||
		got.identifier != "user@sub.example.org" || got.bprefix != "YWI=" || got.auidDomain != "sub.example.org" {
		t.Errorf("parseSignature i=, short b= = %+v", got)
	}
}

// TestSignatureRules checks the tag rules of RFC 6376 section 3.5 that
// make a signature unusable, and those go-msgauth v0.7.0 gets wrong.
func TestSignatureRules(t *testing.T) {
	now := time.Unix(1600000000, 0)
	const base = "v=1; a=rsa-sha256; d=example.org; s=sel; h=from:to; bh=YQ==; b=YWJj; "
	tests := []struct {
		name  string
		value string
		err   string // "" for a usable signature
		auid  string
	}{
		{"plain", base, "", "@example.org"},
		{"i= in d=", base + "i=u@example.org", "", "u@example.org"},
		{"i= in a subdomain", base + "i=u@mail.Example.ORG", "", "u@mail.Example.ORG"},
		{"i= differs in case from d= (domains compare case-insensitively)", base + "i=U@EXAMPLE.org", "", "U@EXAMPLE.org"},
		{"i= is dkim-quoted-printable", base + "i=u=40example.org", "", "u@example.org"},
		{"i= quoted-printable local part", base + "i=a=3Db@example.org", "", "a=b@example.org"},
		{"i= outside d=", base + "i=u@example.net", "not d=", ""},
		{"i= a suffix but not a subdomain", base + "i=u@badexample.org", "not d=", ""},
		{"i= bad quoted-printable", base + "i=u=4@example.org", "quoted-printable", ""},
		{"x= before t=", base + "t=1500000000; x=1400000000", "not after t=", ""},
		{"x= equal to t=", base + "t=1500000000; x=1500000000", "not after t=", ""},
		{"x= after t=", base + "t=1500000000; x=1700000000", "", "@example.org"},
		{"x= passed", base + "x=1500000000", "expired", ""},
		{"duplicate tag", base + "d=example.net", "twice", ""},
		{"no v=", "a=rsa-sha256; d=example.org; s=sel; h=from; bh=YQ==; b=YQ==", "missing required tag v=", ""},
		{"v=2", strings.Replace(base, "v=1", "v=2", 1), "v=2", ""},
		{"From not signed", strings.Replace(base, "h=from:to", "h=to:subject", 1), "From", ""},
		{"unknown algorithm", strings.Replace(base, "rsa-sha256", "rsa-md5", 1), "unknown algorithm", ""},
		{"rsa-sha1", strings.Replace(base, "rsa-sha256", "rsa-sha1", 1), "rsa-sha1", ""},
		{"unknown canonicalization", base + "c=relaxed/loose", "canonicalization", ""},
		{"unknown query method", base + "q=http", "query method", ""},
		{"bad l=", base + "l=-1", "l=", ""},
		{"tag without =", base + "junk", "no \"=\"", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sig := parseSignature(tt.value, now, false)
			if tt.err == "" {
				if sig.err != nil {
					t.Fatalf("err %v, want none", sig.err)
				}
				if sig.identifier != tt.auid {
					t.Errorf("identifier %q, want %q", sig.identifier, tt.auid)
				}
				return
			}
			if sig.err == nil || !strings.Contains(sig.err.Error(), tt.err) {
				t.Errorf("err %v, want one containing %q", sig.err, tt.err)
			}
		})
	}
}

func TestSigned(t *testing.T) {
	rsaKey := loadKey(t, "rsa2048.pem").(*rsa.PrivateKey)
	otherKey := loadKey(t, "rsa2048-other.pem").(*rsa.PrivateKey)
	edKey := loadKey(t, "ed25519.pem")

	// A 512-bit RSA public key: only its size matters, go-msgauth refuses
	// it before any signature check (RFC 8301 section 3.2). Go refuses to
	// generate or use such keys, so the modulus is just a 512-bit number.
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 511))
	if err != nil {
		t.Fatal(err)
	}
	n.SetBit(n, 511, 1).SetBit(n, 0, 1)
	shortPub := &rsa.PublicKey{N: n, E: 65537}

	z := &dnstest.Resolver{
		TXT: map[string][]string{
			"rsa._domainkey.example.org":     {keyRecord(t, rsaKey.Public())},
			"ed._domainkey.example.org":      {keyRecord(t, edKey.Public())},
			"wrong._domainkey.example.org":   {keyRecord(t, otherKey.Public())},
			"short._domainkey.example.org":   {keyRecord(t, shortPub)},
			"two._domainkey.example.org":     {keyRecord(t, rsaKey.Public()), keyRecord(t, rsaKey.Public())},
			"revoked._domainkey.example.org": {"v=DKIM1; k=rsa; p="},
		},
		Fail: map[string]error{
			"servfail._domainkey.example.org": dnstest.ServFail("servfail._domainkey.example.org"),
			"timeout._domainkey.example.org": &net.DNSError{Err: "i/o timeout", Name: "timeout._domainkey.example.org",
				IsTimeout: true},
			"wrapped._domainkey.example.org": fmt.Errorf("resolver: %w",
				&net.DNSError{Err: "no such host", Name: "wrapped._domainkey.example.org", IsNotFound: true}),
			"other._domainkey.example.org": errors.New("connection refused"),
		},
	}

	signOpts := func(signer crypto.Signer, sel, hc, bc string) *msgauth.SignOptions {
		return &msgauth.SignOptions{Domain: "example.org", Selector: sel, Signer: signer,
			HeaderCanonicalization: msgauth.Canonicalization(hc), BodyCanonicalization: msgauth.Canonicalization(bc)}
	}
	signed := func(signer crypto.Signer, sel, hc, bc string) []byte {
		return sign(t, testMessage, signOpts(signer, sel, hc, bc))
	}
	rsaRelaxed := signed(rsaKey, "rsa", "relaxed", "relaxed")
	rsaSimple := signed(rsaKey, "rsa", "simple", "simple")
	edSimple := signed(edKey, "ed", "simple", "simple")
	edRelaxed := signed(edKey, "ed", "relaxed", "relaxed")
	expiring := func() []byte {
		o := signOpts(rsaKey, "rsa", "relaxed", "relaxed")
		o.Expiration = time.Now().Add(time.Hour)
		return sign(t, testMessage, o)
	}()
	// Two signatures: one by the published key, one whose selector names
	// another key.
	goodAndBad := sign(t, string(sign(t, testMessage, signOpts(rsaKey, "rsa", "relaxed", "relaxed"))),
		signOpts(rsaKey, "wrong", "simple", "simple"))
	replaceBody := func(m []byte, from, to string) []byte {
		h, b, _ := bytes.Cut(m, []byte("\r\n\r\n"))
		return slices.Concat(h, []byte("\r\n\r\n"), bytes.Replace(b, []byte(from), []byte(to), 1))
	}
	lfBody := func(m []byte) []byte {
		h, b, _ := bytes.Cut(m, []byte("\r\n\r\n"))
		return slices.Concat(h, []byte("\r\n\r\n"), bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n")))
	}

	type want struct {
		status Status
		errSub string // substring of Err
	}
	tests := []struct {
		name         string
		msg          []byte
		leadingSpace bool
		max          int
		now          func() time.Time
		want         []want
		selector     string
		algorithm    string
	}{
		{name: "rsa relaxed", msg: rsaRelaxed, leadingSpace: true, want: []want{{Pass, ""}}, selector: "rsa", algorithm: "rsa-sha256"},
		{name: "rsa relaxed no leadspc", msg: rsaRelaxed, want: []want{{Pass, ""}}},
		{name: "rsa simple", msg: rsaSimple, leadingSpace: true, want: []want{{Pass, ""}}},
		// Without SMFIP_HDR_LEADSPC "To:bob" comes back as "To: bob", which
		// breaks simple header canonicalization.
		{name: "rsa simple no leadspc", msg: rsaSimple, want: []want{{Fail, "signature did not verify"}}},
		{name: "ed25519 simple", msg: edSimple, leadingSpace: true, want: []want{{Pass, ""}}, selector: "ed", algorithm: "ed25519-sha256"},
		{name: "ed25519 relaxed", msg: edRelaxed, leadingSpace: true, want: []want{{Pass, ""}}},
		{name: "body with bare LF", msg: lfBody(rsaSimple), leadingSpace: true, want: []want{{Pass, ""}}},
		{name: "body modified", msg: replaceBody(rsaRelaxed, "bye", "Bye"), leadingSpace: true, want: []want{{Fail, "body hash did not verify"}}},
		{name: "body whitespace changed relaxed", msg: replaceBody(rsaRelaxed, "some   spaced", "some spaced"), leadingSpace: true, want: []want{{Pass, ""}}},
		{name: "body whitespace changed simple", msg: replaceBody(rsaSimple, "some   spaced", "some spaced"), leadingSpace: true, want: []want{{Fail, "body hash"}}},
		{name: "signed header modified", msg: bytes.Replace(rsaRelaxed, []byte("Folded"), []byte("Faked"), 1), leadingSpace: true,
			want: []want{{Fail, "signature did not verify"}}},
		{name: "unsigned header added", msg: append([]byte("X-Extra: 1\r\n"), rsaSimple...), leadingSpace: true, want: []want{{Pass, ""}}},
		{name: "wrong key", msg: signed(rsaKey, "wrong", "relaxed", "relaxed"), leadingSpace: true, want: []want{{Fail, "signature did not verify"}}},
		{name: "rsa-sha1", msg: signManual(t, unfoldedMessage, rsaKey, crypto.SHA1, "rsa-sha1", "example.org", "rsa", ""),
			leadingSpace: true, want: []want{{PermError, "sha1"}}, algorithm: "rsa-sha1"},
		{name: "x= before t=", msg: signManual(t, unfoldedMessage, rsaKey, crypto.SHA256, "rsa-sha256", "example.org", "rsa", " t=1500000000; x=1400000000;"),
			leadingSpace: true, want: []want{{PermError, "not after t="}}},
		{name: "manual rsa-sha256 control", msg: signManual(t, unfoldedMessage, rsaKey, crypto.SHA256, "rsa-sha256", "example.org", "rsa", ""),
			leadingSpace: true, want: []want{{Pass, ""}}},
		{name: "l= tag", msg: signManual(t, unfoldedMessage, rsaKey, crypto.SHA256, "rsa-sha256", "example.org", "rsa", " l=8;"),
			leadingSpace: true, want: []want{{Policy, "body length"}}},
		{name: "512-bit key", msg: signed(rsaKey, "short", "relaxed", "relaxed"), leadingSpace: true, want: []want{{PermError, "too short"}}},
		{name: "SERVFAIL", msg: signed(rsaKey, "servfail", "relaxed", "relaxed"), leadingSpace: true, want: []want{{TempError, "server misbehaving"}}},
		{name: "timeout", msg: signed(rsaKey, "timeout", "relaxed", "relaxed"), leadingSpace: true, want: []want{{TempError, "timeout"}}},
		{name: "NXDOMAIN", msg: signed(rsaKey, "missing", "relaxed", "relaxed"), leadingSpace: true, want: []want{{PermError, "no key"}}},
		{name: "NXDOMAIN wrapped", msg: signed(rsaKey, "wrapped", "relaxed", "relaxed"), leadingSpace: true, want: []want{{PermError, "no key"}}},
		{name: "non-DNS lookup error", msg: signed(rsaKey, "other", "relaxed", "relaxed"), leadingSpace: true, want: []want{{TempError, "connection refused"}}},
		{name: "two key records", msg: signed(rsaKey, "two", "relaxed", "relaxed"), leadingSpace: true, want: []want{{PermError, "multiple TXT"}}},
		{name: "revoked key", msg: signed(rsaKey, "revoked", "relaxed", "relaxed"), leadingSpace: true, want: []want{{PermError, "revoked"}}},
		{name: "one good one bad", msg: goodAndBad, leadingSpace: true, want: []want{{Fail, "signature did not verify"}, {Pass, ""}}},
		{name: "max signatures", msg: goodAndBad, leadingSpace: true, max: 1, want: []want{{Fail, "signature did not verify"}, {PermError, "too many"}}},
		{name: "x= not reached", msg: expiring, leadingSpace: true, want: []want{{Pass, ""}}},
		{name: "x= passed by injected clock", msg: expiring, leadingSpace: true, now: func() time.Time { return time.Now().Add(2 * time.Hour) },
			want: []want{{PermError, "expired"}}},
		{name: "no signature", msg: []byte(testMessage), leadingSpace: true},
	}
	for _, tt := range tests {
		for _, sizes := range chunkSizes {
			t.Run(fmt.Sprintf("%s/%v", tt.name, sizes), func(t *testing.T) {
				fields, body := splitMessage(tt.msg, tt.leadingSpace)
				v := NewVerifier(Options{LookupTXT: z.LookupTXT, LeadingSpace: tt.leadingSpace,
					MaxSignatures: tt.max, Now: tt.now})
				got := feed(t, v, fields, body, sizes)
				if len(got) != len(tt.want) {
					t.Fatalf("got %d results %+v, want %d", len(got), got, len(tt.want))
				}
				for i, w := range tt.want {
					r := got[i]
					if r.Status != w.status {
						t.Errorf("result %d: status %s (%v), want %s", i, r.Status, r.Err, w.status)
					}
					if (r.Err == nil) != (w.errSub == "") || r.Err != nil && !strings.Contains(r.Err.Error(), w.errSub) {
						t.Errorf("result %d: err %v, want containing %q", i, r.Err, w.errSub)
					}
					if r.Domain != "example.org" || r.Identifier != "@example.org" || len(r.BPrefix) != 8 {
						t.Errorf("result %d: domain %q identifier %q b %q", i, r.Domain, r.Identifier, r.BPrefix)
					}
				}
				if tt.selector != "" && got[0].Selector != tt.selector {
					t.Errorf("selector %q, want %q", got[0].Selector, tt.selector)
				}
				if tt.algorithm != "" && got[0].Algorithm != tt.algorithm {
					t.Errorf("algorithm %q, want %q", got[0].Algorithm, tt.algorithm)
				}
			})
		}
	}
}

// TestBPrefix checks that BPrefix is the start of the signature's b=.
func TestBPrefix(t *testing.T) {
	key := loadKey(t, "ed25519.pem")
	msg := sign(t, testMessage, &msgauth.SignOptions{Domain: "example.org", Selector: "ed", Signer: key})
	sigValue, _, _ := strings.Cut(string(msg), "\r\nFrom:")
	_, b, _ := strings.Cut(sigValue, " b=")
	b = strings.NewReplacer("\r\n", "", " ", "").Replace(b)
	z := &dnstest.Resolver{TXT: map[string][]string{"ed._domainkey.example.org": []string{keyRecord(t, key.Public())}}}
	fields, body := splitMessage(msg, true)
	got := feed(t, NewVerifier(Options{LookupTXT: z.LookupTXT, LeadingSpace: true}), fields, body, []int{100})
	if len(got) != 1 || got[0].Status != Pass || got[0].BPrefix != b[:8] {
		t.Fatalf("got %+v, want pass with BPrefix %q", got, b[:8])
	}
}

// TestChunkingAndPrefetch: whatever the size of the message and the
// chunking of its body, the results are the same, no goroutine is started,
// and the key lookups are prefetched at EndHeaders.
func TestChunkingAndPrefetch(t *testing.T) {
	rsaKey := loadKey(t, "rsa2048.pem")
	edKey := loadKey(t, "ed25519.pem")
	z := &dnstest.Resolver{TXT: map[string][]string{
		"rsa._domainkey.example.org": {keyRecord(t, rsaKey.Public())},
		"ed._domainkey.example.org":  {keyRecord(t, edKey.Public())},
	}}
	signBoth := func(body string) []byte {
		m := sign(t, body, &msgauth.SignOptions{Domain: "example.org", Selector: "rsa", Signer: rsaKey})
		return sign(t, string(m), &msgauth.SignOptions{Domain: "example.org", Selector: "ed", Signer: edKey,
			BodyCanonicalization: msgauth.CanonicalizationSimple})
	}
	line := "a line of body text, long enough to fill the message up\r\n"
	for _, size := range []int{4 << 10, 64 << 10, 200 << 10} {
		msg := signBoth(testMessage + strings.Repeat(line, size/len(line)))
		fields, body := splitMessage(msg, true)
		for _, sizes := range append(chunkSizes[1:], []int{len(body)}) {
			t.Run(fmt.Sprintf("%d/%v", size, sizes[:min(len(sizes), 2)]), func(t *testing.T) {
				var prefetched []string
				v := NewVerifier(Options{LookupTXT: z.LookupTXT, LeadingSpace: true,
					Prefetch: func(name string) { prefetched = append(prefetched, name) }})
				write(t, v, fields, body, sizes)
				if want := []string{"ed._domainkey.example.org", "rsa._domainkey.example.org"}; !slices.Equal(prefetched, want) {
					t.Errorf("prefetched %q, want %q", prefetched, want)
				}
				// No goroutine runs Verifier code once the calls have
				// returned (goroutines of the runtime or of other tests
				// may come and go, so they are not counted).
				if stacks := allStacks(); strings.Contains(stacks, "dkim.(*Verifier)") {
					t.Errorf("a goroutine runs Verifier code:\n%s", stacks)
				}
				got := v.Close(context.Background())
				if len(got) != 2 || got[0].Status != Pass || got[1].Status != Pass {
					t.Fatalf("results %+v, want two passes", got)
				}
			})
		}
	}
}

// allStacks returns the stacks of every goroutine.
func allStacks() string {
	buf := make([]byte, 1<<20)
	return string(buf[:runtime.Stack(buf, true)])
}

func TestNoSignatureNoGoroutine(t *testing.T) {
	v := NewVerifier(Options{LookupTXT: (&dnstest.Resolver{}).LookupTXT, LeadingSpace: true})
	fields, body := splitMessage([]byte(testMessage), true)
	if err := v.EndHeaders(fields); err != nil {
		t.Fatal(err)
	}
	if len(v.bodies) != 0 || strings.Contains(allStacks(), "dkim.(*Verifier)") {
		t.Fatalf("verification started for a message without DKIM-Signature")
	}
	if err := v.WriteBody(body); err != nil {
		t.Fatal(err)
	}
	if got := v.Close(context.Background()); got != nil {
		t.Fatalf("Close = %+v, want no results", got)
	}
	if err := v.WriteBody(body); !errors.Is(err, ErrClosed) {
		t.Fatalf("WriteBody after Close: %v, want ErrClosed", err)
	}
}

// waitGoroutines waits for the number of goroutines to drop to n.
func waitGoroutines(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, want %d:\n%s", runtime.NumGoroutine(), n, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestAbort(t *testing.T) {
	key := loadKey(t, "rsa2048.pem")
	z := &dnstest.Resolver{TXT: map[string][]string{"rsa._domainkey.example.org": []string{keyRecord(t, key.Public())}}}
	one := sign(t, testMessage+strings.Repeat("more body text\r\n", 10000),
		&msgauth.SignOptions{Domain: "example.org", Selector: "rsa", Signer: key})
	three := sign(t, string(sign(t, string(one), &msgauth.SignOptions{Domain: "example.org", Selector: "rsa", Signer: key})),
		&msgauth.SignOptions{Domain: "example.org", Selector: "rsa", Signer: key})
	// A lookup that answers only when its context is cancelled: Abort must
	// not wait for DNS.
	blocking := func(ctx context.Context, name string) ([]string, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}

	tests := []struct {
		name      string
		msg       []byte
		lookup    func(context.Context, string) ([]string, error)
		bodyBytes int // fed before Abort; -1: abort before EndHeaders
	}{
		{"before EndHeaders", three, z.LookupTXT, -1},
		{"one signature, after header", one, z.LookupTXT, 0},
		{"one signature, mid-body", one, z.LookupTXT, 50000},
		{"three signatures, mid-body", three, z.LookupTXT, 50000},
		{"three signatures, blocked DNS", three, blocking, 0},
		{"one signature, blocked DNS", one, blocking, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := runtime.NumGoroutine()
			fields, body := splitMessage(tt.msg, true)
			v := NewVerifier(Options{LookupTXT: tt.lookup, LeadingSpace: true})
			if tt.bodyBytes >= 0 {
				if err := v.EndHeaders(fields); err != nil {
					t.Fatal(err)
				}
				for b := body[:tt.bodyBytes]; len(b) > 0; b = b[min(len(b), 4000):] {
					if err := v.WriteBody(b[:min(len(b), 4000)]); err != nil {
						t.Fatal(err)
					}
				}
			}
			v.Abort()
			v.Abort() // idempotent
			if got := v.Close(context.Background()); got != nil {
				t.Errorf("Close after Abort = %+v", got)
			}
			if err := v.WriteBody([]byte("x")); !errors.Is(err, ErrClosed) {
				t.Errorf("WriteBody after Abort: %v, want ErrClosed", err)
			}
			waitGoroutines(t, before)
		})
	}
}

// TestCloseDeadline: Close's context bounds the key lookups it waits for,
// and a lookup cut short by it is a temporary failure, never "no key".
func TestCloseDeadline(t *testing.T) {
	key := loadKey(t, "rsa2048.pem")
	msg := sign(t, testMessage, &msgauth.SignOptions{Domain: "example.org", Selector: "rsa", Signer: key})
	blocking := func(ctx context.Context, name string) ([]string, error) {
		<-ctx.Done()
		return nil, &net.DNSError{Err: ctx.Err().Error(), Name: name, IsTimeout: true, IsTemporary: true}
	}
	fields, body := splitMessage(msg, true)
	v := NewVerifier(Options{LookupTXT: blocking, LeadingSpace: true})
	write(t, v, fields, body, []int{100})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	done := make(chan []Result)
	go func() { done <- v.Close(ctx) }()
	select {
	case got := <-done:
		if len(got) != 1 || got[0].Status != TempError {
			t.Fatalf("Close = %+v, want one temperror", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return at its context's deadline")
	}
}

// TestMemory streams a 50 MiB body in 64 KiB chunks and checks that the live
// heap does not grow with it.
func TestMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("50 MiB body")
	}
	key := loadKey(t, "rsa2048.pem")
	z := &dnstest.Resolver{TXT: map[string][]string{"rsa._domainkey.example.org": []string{keyRecord(t, key.Public())}}}
	const chunkSize, chunks = 64 << 10, 800
	chunk := make([]byte, 0, chunkSize)
	for i := 0; len(chunk) < chunkSize-100; i++ {
		chunk = fmt.Appendf(chunk, "line %d: the quick  brown fox\tjumps over the lazy dog\r\n", i)
	}
	header := "From: alice@example.org\r\nTo: bob@example.net\r\nSubject: big\r\n\r\n"

	// Sign the body as it streams, with both canonicalizations.
	var sigs []string
	for _, c := range []msgauth.Canonicalization{msgauth.CanonicalizationSimple, msgauth.CanonicalizationRelaxed} {
		s, err := msgauth.NewSigner(&msgauth.SignOptions{Domain: "example.org", Selector: "rsa", Signer: key,
			HeaderCanonicalization: c, BodyCanonicalization: c})
		if err != nil {
			t.Fatal(err)
		}
		s.Write([]byte(header))
		for range chunks {
			s.Write(chunk)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		sigs = append(sigs, s.Signature())
	}
	fields, _ := splitMessage([]byte(strings.Join(sigs, "")+header), true)

	h := watchHeap()
	v := NewVerifier(Options{LookupTXT: z.LookupTXT, LeadingSpace: true})
	if err := v.EndHeaders(fields); err != nil {
		t.Fatal(err)
	}
	h.stream(t, v, chunk, chunks)
	results := v.Close(context.Background())
	if len(results) != 2 || results[0].Status != Pass || results[1].Status != Pass {
		t.Fatalf("results %+v, want two passes", results)
	}
	t.Logf("body %d MiB: live heap grew at most %d KiB; %d MiB allocated in total",
		chunkSize*chunks>>20, h.growth()>>10, h.allocated()>>20)
	if h.growth() > 2<<20 {
		t.Errorf("live heap grew by %d bytes while streaming, want < 2 MiB", h.growth())
	}
}

// heapWatch samples the live heap while a test streams a body.
type heapWatch struct {
	ms                    runtime.MemStats
	base, peak, allocBase uint64
}

func watchHeap() *heapWatch {
	h := &heapWatch{}
	runtime.GC()
	runtime.ReadMemStats(&h.ms)
	h.base, h.peak, h.allocBase = h.ms.HeapAlloc, h.ms.HeapAlloc, h.ms.TotalAlloc
	return h
}

// stream writes chunk n times to v, sampling the live heap every 50 writes.
func (h *heapWatch) stream(t *testing.T, v *Verifier, chunk []byte, n int) {
	t.Helper()
	for i := range n {
		if err := v.WriteBody(chunk); err != nil {
			t.Fatal(err)
		}
		if i%50 == 49 {
			runtime.GC()
			runtime.ReadMemStats(&h.ms)
			h.peak = max(h.peak, h.ms.HeapAlloc)
		}
	}
}

func (h *heapWatch) growth() uint64 { return h.peak - h.base }

func (h *heapWatch) allocated() uint64 {
	runtime.ReadMemStats(&h.ms)
	return h.ms.TotalAlloc - h.allocBase
}

func BenchmarkVerify(b *testing.B) {
	key := loadKey(b, "rsa2048.pem")
	z := &dnstest.Resolver{TXT: map[string][]string{"rsa._domainkey.example.org": []string{keyRecord(b, key.Public())}}}
	body := strings.Repeat("A line of body text that goes on for a while, typical of mail.\r\n", 52)
	msg := sign(b, testMessage+body, &msgauth.SignOptions{Domain: "example.org", Selector: "rsa", Signer: key})
	if len(msg) < 3900 || len(msg) > 4300 {
		b.Fatalf("message is %d bytes, want about 4 KiB", len(msg))
	}
	fields, rawBody := splitMessage(msg, true)
	// As the daemon runs: parsed keys kept across messages.
	opts := Options{LookupTXT: z.LookupTXT, LeadingSpace: true, Keys: NewKeyCache(10)}
	b.ReportAllocs()
	for b.Loop() {
		v := NewVerifier(opts)
		if err := v.EndHeaders(fields); err != nil {
			b.Fatal(err)
		}
		if err := v.WriteBody(rawBody); err != nil {
			b.Fatal(err)
		}
		if r := v.Close(context.Background()); len(r) != 1 || r[0].Status != Pass {
			b.Fatalf("results %+v", r)
		}
	}
}

func TestNoResolver(t *testing.T) {
	key := loadKey(t, "ed25519.pem")
	msg := sign(t, testMessage, &msgauth.SignOptions{Domain: "example.org", Selector: "ed", Signer: key})
	fields, body := splitMessage(msg, true)
	got := feed(t, NewVerifier(Options{LeadingSpace: true}), fields, body, []int{64 << 10})
	if len(got) != 1 || got[0].Status != TempError {
		t.Fatalf("got %+v, want one temperror", got)
	}
}

// A body with a huge run of blank lines is not buffered: the empty lines
// are counted, the signatures verify, and the live heap stays small.
// (go-msgauth's signer buffers such runs, quadratically slow, so the
// signature is made here from the known canonical body.)
func TestBlankRunBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("32 MiB body")
	}
	key := loadKey(t, "rsa2048.pem").(*rsa.PrivateKey)
	z := &dnstest.Resolver{TXT: map[string][]string{"rsa._domainkey.example.org": []string{keyRecord(t, key.Public())}}}
	header := "From: alice@example.org\r\nTo: bob@example.net\r\nSubject: blank\r\n"
	const chunks = 512 // of 64 KiB: 32 MiB
	for _, tc := range []struct {
		canon string
		line  string // a blank line in that canonicalization
	}{
		{"simple", "\r\n"},
		{"relaxed", " \t\r\n"},
	} {
		blank := []byte(strings.Repeat(tc.line, (64<<10)/len(tc.line)))
		lines := len(blank) / len(tc.line) * chunks
		// The canonical body: the blank lines are empty lines either way.
		bh := sha256.New()
		bh.Write([]byte("x\r\n"))
		crlfs := []byte(strings.Repeat("\r\n", 1<<10))
		for n := lines; n > 0; n -= min(n, 1<<10) {
			bh.Write(crlfs[:2*min(n, 1<<10)])
		}
		bh.Write([]byte("y\r\n"))
		sigField := fmt.Sprintf("DKIM-Signature: v=1; a=rsa-sha256; c=simple/%s; d=example.org; s=rsa;\r\n h=from:to:subject; bh=%s;\r\n b=",
			tc.canon, base64.StdEncoding.EncodeToString(bh.Sum(nil)))
		hh := sha256.New()
		hh.Write([]byte(header))
		hh.Write([]byte(sigField))
		b, err := rsa.SignPKCS1v15(nil, key, crypto.SHA256, hh.Sum(nil))
		if err != nil {
			t.Fatal(err)
		}
		fields, _ := splitMessage([]byte(sigField+base64.StdEncoding.EncodeToString(b)+"\r\n"+header+"\r\n"), true)

		h := watchHeap()
		v := NewVerifier(Options{LookupTXT: z.LookupTXT, LeadingSpace: true})
		v.EndHeaders(fields)
		v.WriteBody([]byte("x\r\n"))
		h.stream(t, v, blank, chunks)
		v.WriteBody([]byte("y\r\n"))
		results := v.Close(context.Background())
		if len(results) != 1 || results[0].Status != Pass {
			t.Errorf("c=%s: results %+v, want pass", tc.canon, results)
		}
		if h.growth() > 4<<20 {
			t.Errorf("c=%s: live heap grew by %d bytes, want < 4 MiB", tc.canon, h.growth())
		}
	}
}

// TestIdentifierRules checks the RFC 6376 rules go-msgauth v0.7.0 gets
// wrong, with real signatures: the i= domain compares case-insensitively
// with d=, i= is dkim-quoted-printable (section 3.5), and a key with t=s
// refuses an i= in a subdomain of d= (section 3.6.1). go-msgauth runs
// alongside to show why this package verifies on its own.
func TestIdentifierRules(t *testing.T) {
	key := loadKey(t, "rsa2048.pem").(*rsa.PrivateKey)
	rec := keyRecord(t, key.Public())
	z := &dnstest.Resolver{TXT: map[string][]string{
		"rsa._domainkey.example.org":    {rec},
		"strict._domainkey.example.org": {strings.Replace(rec, "k=rsa;", "k=rsa; t=y:s;", 1)},
	}}
	tests := []struct {
		name, selector, i string
		want, msgauth     Status
	}{
		{"i= upper case", "rsa", "U@EXAMPLE.ORG", Pass, PermError},
		{"i= quoted-printable", "rsa", "u=40example.org", Pass, PermError},
		{"i= quoted-printable upper case", "rsa", "u=40Example.Org", Pass, PermError},
		{"t=s, i= in a subdomain", "strict", "u@mail.example.org", PermError, Pass},
		{"t=s, i= in d=", "strict", "u@example.org", Pass, Pass},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := signManual(t, unfoldedMessage, key, crypto.SHA256, "rsa-sha256", "example.org", tt.selector, " i="+tt.i+";")
			fields, body := splitMessage(msg, true)
			got := feed(t, NewVerifier(Options{LookupTXT: z.LookupTXT, LeadingSpace: true}), fields, body, []int{100})
			if len(got) != 1 || got[0].Status != tt.want {
				t.Errorf("got %+v, want %s", got, tt.want)
			}
			if ma := msgauthStatuses(msg, z.LookupTXT); ma != string(tt.msgauth) {
				t.Errorf("go-msgauth says %s, the test expects it to say %s", ma, tt.msgauth)
			}
		})
	}
}

// TestKeyCache: a key record is parsed once, a changed record anew, and the
// cache stays within its size.
func TestKeyCache(t *testing.T) {
	key := loadKey(t, "rsa2048.pem")
	rec := keyRecord(t, key.Public())
	c := NewKeyCache(2)
	k1, err := c.parse(rec)
	if err != nil {
		t.Fatal(err)
	}
	if k2, _ := c.parse(rec); k2 != k1 {
		t.Error("the same record was parsed twice")
	}
	if _, err := c.parse("v=DKIM1; p="); err == nil {
		t.Error("revoked key: no error")
	}
	if _, err := c.parse(rec + " "); err != nil {
		t.Error(err)
	}
	if len(c.keys) > 2 {
		t.Errorf("%d entries, want at most 2", len(c.keys))
	}
}

// TestOversigning: a name listed in h= more often than the field occurs
// adds nothing for the missing ones (RFC 6376 section 5.4.2), so a signer
// that lists From twice forbids a second From field being added.
func TestOversigning(t *testing.T) {
	key := loadKey(t, "ed25519.pem")
	z := &dnstest.Resolver{TXT: map[string][]string{"ed._domainkey.example.org": []string{keyRecord(t, key.Public())}}}
	msg := sign(t, testMessage, &msgauth.SignOptions{Domain: "example.org", Selector: "ed", Signer: key,
		HeaderKeys: []string{"From", "From", "Subject", "Subject", "To", "Date", "Message-ID", "Reply-To"}})
	verify := func(m []byte) Status {
		fields, body := splitMessage(m, true)
		got := feed(t, NewVerifier(Options{LookupTXT: z.LookupTXT, LeadingSpace: true}), fields, body, []int{64})
		if len(got) != 1 {
			t.Fatalf("results %+v", got)
		}
		return got[0].Status
	}
	if got := verify(msg); got != Pass {
		t.Errorf("oversigned message: %s, want pass", got)
	}
	// A second From field added below the signature (where a verifier
	// taking the first From field would not see it).
	withFrom := bytes.Replace(msg, []byte("To:bob"), []byte("From: evil@example.net\r\nTo:bob"), 1)
	if got := verify(withFrom); got != Fail {
		t.Errorf("second From added: %s, want fail", got)
	}
	withReplyTo := bytes.Replace(msg, []byte("To:bob"), []byte("Reply-To: evil@example.net\r\nTo:bob"), 1)
	if got := verify(withReplyTo); got != Fail {
		t.Errorf("signed-absent Reply-To added: %s, want fail", got)
	}
}

// TestHeaderSigned: b= is verified even when the body hash fails, and the
// Result says which of the two failed (the evidence that only the body of
// a genuinely signed message changed in transit).
func TestHeaderSigned(t *testing.T) {
	key := loadKey(t, "ed25519.pem")
	z := &dnstest.Resolver{TXT: map[string][]string{"ed._domainkey.example.org": {keyRecord(t, key.Public())}}}
	msg := string(sign(t, testMessage, &msgauth.SignOptions{Domain: "example.org", Selector: "ed", Signer: key}))
	tests := []struct {
		name         string
		msg          string
		status       Status
		err          error
		headerSigned bool
	}{
		{name: "untouched", msg: msg, status: Pass, headerSigned: true},
		{name: "a footer added", msg: msg + "--\r\nlist footer\r\n", status: Fail, err: ErrBodyHash, headerSigned: true},
		{name: "the subject tagged", msg: strings.Replace(msg, "Subject:  Folded", "Subject:  [list] Folded", 1), status: Fail, err: ErrSignature},
		{name: "both changed", msg: strings.Replace(msg, "Subject:  Folded", "Subject:  [list] Folded", 1) + "footer\r\n", status: Fail, err: ErrSignature},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fields, body := splitMessage([]byte(tc.msg), true)
			got := feed(t, NewVerifier(Options{LookupTXT: z.LookupTXT, LeadingSpace: true}), fields, body, []int{100})
			if len(got) != 1 {
				t.Fatalf("%d results", len(got))
			}
			r := got[0]
			if r.Status != tc.status || !errors.Is(r.Err, tc.err) && !(tc.err == nil && r.Err == nil) || r.HeaderSigned != tc.headerSigned {
				t.Errorf("got %s (%v) header signed %v, want %s (%v) header signed %v", r.Status, r.Err, r.HeaderSigned, tc.status, tc.err, tc.headerSigned)
			}
		})
	}
}
