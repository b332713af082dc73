// The legacy run of the Mail::DKIM corpus verifies RSA keys of 512 and
// 768 bits, which Go refuses by default.
//go:debug rsa1024min=0

package dkim

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
	"github.com/dmarc-milter/dmarc-milter/internal/rfc5322"

	msgauth "github.com/emersion/go-msgauth/dkim"

	"github.com/dmarc-milter/dmarc-milter/internal/conformance"
)

// verifyAsMilter feeds raw through a Verifier as Postfix would, once per
// combination of header delivery (with and without SMFIP_HDR_LEADSPC) and
// chunking, and checks that every run gives the same results.
func verifyAsMilter(t *testing.T, raw []byte, lookup func(context.Context, string) ([]string, error)) []Result {
	t.Helper()
	return verifyAsMilterOpts(t, raw, Options{LookupTXT: lookup})
}

// verifyAsMilterOpts is verifyAsMilter with options (LeadingSpace is set
// by each run).
func verifyAsMilterOpts(t *testing.T, raw []byte, opts Options) []Result {
	t.Helper()
	var first []Result
	for _, leadingSpace := range []bool{true, false} {
		for _, sizes := range chunkSizes {
			fields, body := splitMessage(raw, leadingSpace)
			opts.LeadingSpace = leadingSpace
			v := NewVerifier(opts)
			got := feed(t, v, fields, body, sizes)
			if first == nil {
				first = got
				continue
			}
			if !sameStatuses(first, got) {
				t.Errorf("leading space %v, chunks %v: %s, but first run %s", leadingSpace, sizes, statuses(got), statuses(first))
			}
		}
	}
	return first
}

func sameStatuses(a, b []Result) bool {
	return statuses(a) == statuses(b)
}

func statuses(rs []Result) string {
	var s []string
	for _, r := range rs {
		s = append(s, string(r.Status))
	}
	return strings.Join(s, ",")
}

var quoted = regexp.MustCompile(`"([^"]*)"`)

// rfc8463Zone serves the key records of RFC 8463 Appendix A.2.
func rfc8463Zone(t *testing.T) *dnstest.Resolver {
	t.Helper()
	dir := filepath.Join(conformance.Dir(t, "dkim"), "rfc8463")
	dns, err := os.ReadFile(filepath.Join(dir, "rfc8463-A2-dns.txt"))
	if err != nil {
		t.Fatal(err)
	}
	// name. IN TXT "string" ["string" ...]
	z := &dnstest.Resolver{TXT: map[string][]string{}, Fail: map[string]error{}}
	for line := range strings.Lines(string(dns)) {
		name, _, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		var txt strings.Builder
		for _, m := range quoted.FindAllStringSubmatch(line, -1) {
			txt.WriteString(m[1])
		}
		z.TXT[strings.ToLower(strings.TrimSuffix(name, "."))] = []string{txt.String()}
	}
	if len(z.TXT) != 2 {
		t.Fatalf("%d key records, want 2", len(z.TXT))
	}
	return z
}

func TestRFC8463(t *testing.T) {
	dir := filepath.Join(conformance.Dir(t, "dkim"), "rfc8463")
	z := rfc8463Zone(t)
	msg, err := os.ReadFile(filepath.Join(dir, "rfc8463-A3-signed-message.eml"))
	if err != nil {
		t.Fatal(err)
	}
	got := verifyAsMilter(t, msg, z.LookupTXT)
	want := []Result{
		{Status: Pass, Domain: "football.example.com", Selector: "brisbane", Identifier: "@football.example.com",
			Algorithm: "ed25519-sha256", BPrefix: "/gCrinpc", HeaderSigned: true},
		{Status: Pass, Domain: "football.example.com", Selector: "test", Identifier: "@football.example.com",
			Algorithm: "rsa-sha256", BPrefix: "F45dVWDf", HeaderSigned: true},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("signature %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
}

// TestMailAuth verifies stalwartlabs/mail-auth's real-world signed messages
// (key records, a blank line, then the message with LF line ends).
func TestMailAuth(t *testing.T) {
	dir := filepath.Join(conformance.Dir(t, "dkim"), "mail-auth")
	files, err := filepath.Glob(filepath.Join(dir, "*.txt"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no messages in %s: %v", dir, err)
	}
	// Exceptions, by file, with the statuses we expect instead of pass.
	exceptions := map[string]string{}
	// mail-auth verifies at this time (005.txt expires a day later).
	now := func() time.Time { return time.Unix(1667843664, 0) }
	pass := 0
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			records, msg, _ := bytes.Cut(data, []byte("\n\n"))
			z := &dnstest.Resolver{TXT: map[string][]string{}, Fail: map[string]error{}}
			for line := range strings.Lines(string(records)) {
				name, value, _ := strings.Cut(strings.TrimSpace(line), " ")
				z.TXT[strings.ToLower(name)] = []string{value}
			}
			got := verifyAsMilterOpts(t, rfc5322.CRLF(msg), Options{LookupTXT: z.LookupTXT, Now: now})
			if len(got) == 0 {
				t.Fatal("no signatures")
			}
			want := strings.TrimSuffix(strings.Repeat("pass,", len(got)), ",")
			if ex, ok := exceptions[filepath.Base(file)]; ok {
				want = ex
			}
			if statuses(got) != want {
				t.Errorf("got %s (%v), want %s", statuses(got), got, want)
			} else if want == strings.TrimSuffix(strings.Repeat("pass,", len(got)), ",") {
				pass++
			}
		})
	}
	t.Logf("mail-auth: %d of %d messages pass all signatures; %d listed exceptions", pass, len(files), len(exceptions))
}

// mailDKIMZone reads Mail::DKIM's FAKE_DNS.dat: "name value" lines, value
// NXDOMAIN for no record and ~~text~~ for a DNS error.
func mailDKIMZone(t *testing.T, path string) *dnstest.Resolver {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	z := &dnstest.Resolver{TXT: map[string][]string{}, Fail: map[string]error{}}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		name, value, _ := strings.Cut(line, " ")
		name = strings.ToLower(name)
		value = strings.TrimSpace(value)
		switch {
		case value == "NXDOMAIN":
			// Absent from the zone: NXDOMAIN.
		case strings.HasPrefix(value, "~~"):
			z.Fail[name] = &net.DNSError{Err: strings.Trim(value, "~"), Name: name, IsTemporary: true}
		case value == `""`:
			z.TXT[name] = []string{""}
		default:
			z.TXT[name] = []string{value}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return z
}

// TestMailDKIM runs the Mail::DKIM corpus through the real cryptography,
// twice:
//   - legacy: rsa-sha1 and RSA keys under 1024 bits are verified (a test-only
//     option), so that every case exercises canonicalization, tag parsing,
//     key records and signature checks, and must give Mail::DKIM's own
//     result: pass, fail, or invalid (permerror; temperror for a DNS error
//     fetching the key);
//   - strict, as the daemon runs: rsa-sha1 and short keys are permerror
//     (RFC 8301, checked before the key is fetched, RFC 6376 section
//     6.1.1), every other case as in the legacy run.
//
// DomainKey-Signature (RFC 4870, historic) is another protocol: not
// verified, no result. The remaining differences are listed, with why.
// go-msgauth runs the same messages as a cross-check of the strict run.
func TestMailDKIM(t *testing.T) {
	dir := filepath.Join(conformance.Dir(t, "dkim"), "mail-dkim")
	z := mailDKIMZone(t, filepath.Join(dir, "FAKE_DNS.dat"))
	data, err := os.ReadFile(filepath.Join(dir, "expectations.json"))
	if err != nil {
		t.Fatal(err)
	}
	var exp struct {
		Cases []struct {
			File       string
			Expected   string
			Signatures []struct {
				Header  string
				A       *string
				KeyBits any `json:"key_bits"`
			}
		}
	}
	if err := json.Unmarshal(data, &exp); err != nil {
		t.Fatal(err)
	}
	// Where this verifier differs from the translated expectation, and why:
	// the result in the legacy run and in the strict run ("" where the
	// translation holds).
	exceptions := map[string]struct{ legacy, strict, why string }{
		"good_ietf00_1.txt": {"permerror", "", "draft-00 signature without bh= (the body hash was then part of b=), not the RFC 6376 algorithm"},
		"good_ietf00_2.txt": {"permerror", "", "draft-00 signature without bh= (the body hash was then part of b=), not the RFC 6376 algorithm"},
		"good_ietf00_3.txt": {"permerror", "", "draft-00 signature without bh= (the body hash was then part of b=), not the RFC 6376 algorithm"},
		"good_ietf00_4.txt": {"permerror", "", "draft-00 signature without bh= (the body hash was then part of b=), not the RFC 6376 algorithm"},
		"good_ietf00_5.txt": {"permerror", "", "draft-00 signature without bh= (the body hash was then part of b=), not the RFC 6376 algorithm"},
		"mine_ietf01_3.txt": {"", "permerror", "pre-standard draft signature without v=1, which RFC 6376 section 3.5 requires (the legacy run takes drafts)"},
		"mine_ietf01_4.txt": {"", "permerror", "pre-standard draft signature without v=1, which RFC 6376 section 3.5 requires (the legacy run takes drafts)"},
		"badkey_8.txt":      {"pass", "", "key g= (granularity) is RFC 4871; RFC 6376 removed it and verifiers ignore unknown key tags"},
		"badkey_9.txt":      {"pass", "", "key g= (granularity) is RFC 4871; RFC 6376 removed it"},
		"badkey_12.txt":     {"pass", "", "key g= (granularity) is RFC 4871; RFC 6376 removed it"},
		"badkey_13.txt":     {"pass", "", "key g= (granularity) is RFC 4871; RFC 6376 removed it"},
		"multiple_1.txt": {"fail,pass,permerror,fail", "", "Mail::DKIM's result is the message's (a signature passes); per signature: " +
			"the first is c=simple over a relaxed signature, the third's bh= is not valid base64 (a syntax error), the fourth's b= is altered"},
		"multiple_2.txt": {"permerror,pass,fail,permerror", "", "Mail::DKIM's result is the message's (a signature passes); per signature: " +
			"c=foobar is unknown, the third's b= is altered (\"shouldfail\"), the fourth is \"synerr\""},
	}
	// Where go-msgauth v0.7.0 differs from the strict run, and why.
	msgauthDiffers := map[string]string{
		"no_body_1.txt": "a message that ends after the header, without the empty line: go-msgauth cannot read it",
		"badkey_14.txt": "rsa-sha1 with a DNS error: RFC 6376 section 6.1.1 checks a= before fetching the key (6.1.2); go-msgauth fetches first",
		"badkey_15.txt": "rsa-sha1 with a DNS error: RFC 6376 section 6.1.1 checks a= before fetching the key (6.1.2); go-msgauth fetches first",
	}
	msgauthWrong := map[string]string{}

	counts := map[string]int{}
	for _, c := range exp.Cases {
		name := filepath.Base(c.File)
		raw, err := os.ReadFile(filepath.Join(dir, c.File))
		if err != nil {
			t.Fatal(err)
		}
		for _, mode := range []string{"legacy", "strict"} {
			t.Run(mode+"/"+name, func(t *testing.T) {
				var want []string
				for _, sig := range c.Signatures {
					if sig.Header != "DKIM-Signature" {
						continue
					}
					bits, numeric := sig.KeyBits.(float64)
					dnsErr, _ := sig.KeyBits.(string)
					weak := sig.A != nil && *sig.A == "rsa-sha1" || numeric && bits < 1024
					switch {
					case mode == "strict" && weak:
						want = append(want, "permerror")
					case sig.A == nil:
						// No a= tag: the signature is unparseable.
						want = append(want, "permerror")
					case strings.HasPrefix(dnsErr, "~~"):
						want = append(want, "temperror")
					case c.Expected == "pass":
						want = append(want, "pass")
					case c.Expected == "fail":
						want = append(want, "fail")
					default:
						want = append(want, "permerror")
					}
				}
				wantS := strings.Join(want, ",")
				if ex := exceptions[name]; mode == "legacy" && ex.legacy != "" {
					wantS = ex.legacy
				} else if mode == "strict" && ex.strict != "" {
					wantS = ex.strict
				}
				// Mail::DKIM's corpus mixes LF and CRLF files; the body is
				// fed as it is, exercising the lone-LF handling.
				got := verifyAsMilterOpts(t, raw, Options{LookupTXT: z.LookupTXT, weak: mode == "legacy"})
				if statuses(got) != wantS {
					t.Errorf("got %q %v, want %q (Mail::DKIM: %s)", statuses(got), errs(got), wantS, c.Expected)
					return
				}
				counts[mode+": "+c.Expected+"->"+wantS]++
				if mode == "strict" {
					if ma := msgauthStatuses(raw, z.LookupTXT); ma != statuses(got) {
						msgauthWrong[name] = fmt.Sprintf("go-msgauth %s, we %s", ma, statuses(got))
					}
				}
			})
		}
	}
	t.Logf("Mail::DKIM: %d cases; matching, by Mail::DKIM result -> ours: %v", len(exp.Cases), counts)
	for name, d := range msgauthWrong {
		if why, ok := msgauthDiffers[name]; ok {
			t.Logf("go-msgauth differs on %s (%s): %s", name, d, why)
		} else {
			t.Errorf("cross-check: go-msgauth differs on %s: %s", name, d)
		}
	}
	for name := range msgauthDiffers {
		if _, ok := msgauthWrong[name]; !ok {
			t.Errorf("cross-check: go-msgauth no longer differs on %s; remove it from the list", name)
		}
	}
}

// msgauthStatuses verifies raw with go-msgauth and returns its results as
// our statuses, for the cross-check.
func msgauthStatuses(raw []byte, lookup func(context.Context, string) ([]string, error)) string {
	vs, err := msgauth.VerifyWithOptions(bytes.NewReader(rfc5322.CRLF(raw)), &msgauth.VerifyOptions{
		LookupTXT: func(name string) ([]string, error) { return lookup(context.Background(), name) },
	})
	if err != nil {
		return "error: " + err.Error()
	}
	var s []string
	for _, v := range vs {
		switch {
		case v.Err == nil:
			s = append(s, "pass")
		case msgauth.IsTempFail(v.Err):
			s = append(s, "temperror")
		case msgauth.IsPermFail(v.Err):
			s = append(s, "permerror")
		default:
			s = append(s, "fail")
		}
	}
	return strings.Join(s, ",")
}

func errs(rs []Result) []string {
	var s []string
	for _, r := range rs {
		s = append(s, fmt.Sprint(r.Err))
	}
	return s
}

// TestDkimpy uses dkimpy's fixtures: its ed25519 key pair signs its test
// message (and the signature is checked against tampering), Exim's ed25519
// signature and the RFC 6376 example signed with the RFC 8463 keys verify,
// and its good and broken key records parse or fail as dkimpy expects.
func TestDkimpy(t *testing.T) {
	dir := filepath.Join(conformance.Dir(t, "dkim"), "dkimpy")
	read := func(name string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}

	t.Run("ed25519 key pair signs", func(t *testing.T) {
		seed, err := base64.StdEncoding.DecodeString(read("ed25519test.key"))
		if err != nil {
			t.Fatal(err)
		}
		key := ed25519.NewKeyFromSeed(seed)
		z := &dnstest.Resolver{TXT: map[string][]string{"test._domainkey.example.com": []string{read("ed25519test.dns")}}}
		pub, err := parseKey(read("ed25519test.dns"))
		if err != nil || !pub.ed.Equal(key.Public()) {
			t.Fatalf("ed25519test.dns does not hold the public key of ed25519test.key: %v", err)
		}
		var signed bytes.Buffer
		if err := msgauth.Sign(&signed, bytes.NewReader(rfc5322.CRLF([]byte(read("ed25519test.msg")+"\n"))), &msgauth.SignOptions{
			Domain: "example.com", Selector: "test", Signer: key, HeaderKeys: []string{"From", "To", "Subject", "Date", "Message-ID"},
		}); err != nil {
			t.Fatal(err)
		}
		if got := statuses(verifyAsMilter(t, signed.Bytes(), z.LookupTXT)); got != "pass" {
			t.Errorf("signed with dkimpy's key: %s, want pass", got)
		}
		tampered := bytes.Replace(signed.Bytes(), []byte("a test message"), []byte("a fake message"), 1)
		if got := statuses(verifyAsMilter(t, tampered, z.LookupTXT)); got != "fail" {
			t.Errorf("tampered body: %s, want fail", got)
		}
	})

	t.Run("Exim ed25519 signature", func(t *testing.T) {
		z := &dnstest.Resolver{TXT: map[string][]string{"sed._domainkey.test.ex": []string{read("eximtest.dns")}}}
		msg := rfc5322.CRLF([]byte(read("ed25519test2.msg") + "\n"))
		if got := verifyAsMilter(t, msg, z.LookupTXT); statuses(got) != "pass" {
			t.Errorf("got %s %v, want pass", statuses(got), errs(got))
		}
	})

	t.Run("RFC 6376 example signed with the RFC 8463 keys", func(t *testing.T) {
		z := rfc8463Zone(t)
		msg := rfc5322.CRLF([]byte(read("rfc6376.signed.msg") + "\n"))
		if got := verifyAsMilter(t, msg, z.LookupTXT); statuses(got) != "pass,pass" {
			t.Errorf("got %s %v, want pass,pass", statuses(got), errs(got))
		}
	})

	t.Run("key records", func(t *testing.T) {
		for _, tc := range []struct {
			file string
			ok   bool
		}{
			{"test.txt", true},
			{"test_bad.txt", false},   // truncated RSA key
			{"badk.txt", false},       // k=ed25519-sha256 is not a key type
			{"badversion.txt", false}, // "v=DKIM1:" is not DKIM1
		} {
			k, err := parseKey(read(tc.file))
			if (err == nil) != tc.ok {
				t.Errorf("%s: err %v, want ok %v", tc.file, err, tc.ok)
			}
			if tc.ok && (k.rsa == nil || k.rsa.N.BitLen() != 1024) {
				t.Errorf("%s: %+v, want a 1024-bit RSA key", tc.file, k)
			}
		}
	})
}
