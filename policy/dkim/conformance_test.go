package dkim

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/dmarc-milter/dmarc-milter/internal/conformance"
)

// verifyAsMilter feeds raw through a Verifier as Postfix would, once per
// combination of header delivery (with and without SMFIP_HDR_LEADSPC) and
// chunking, and checks that every run gives the same results.
func verifyAsMilter(t *testing.T, raw []byte, lookup func(context.Context, string) ([]string, error)) []Result {
	t.Helper()
	var first []Result
	for _, leadingSpace := range []bool{true, false} {
		for _, sizes := range chunkSizes {
			fields, body := splitMessage(raw, leadingSpace)
			v := NewVerifier(context.Background(), Options{LookupTXT: lookup, LeadingSpace: leadingSpace})
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

// toCRLF turns LF line ends into CRLF.
func toCRLF(b []byte) []byte {
	return bytes.ReplaceAll(bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n")), []byte("\n"), []byte("\r\n"))
}

var quoted = regexp.MustCompile(`"([^"]*)"`)

func TestRFC8463(t *testing.T) {
	dir := filepath.Join(conformance.Dir(t, "dkim"), "rfc8463")
	dns, err := os.ReadFile(filepath.Join(dir, "rfc8463-A2-dns.txt"))
	if err != nil {
		t.Fatal(err)
	}
	// name. IN TXT "string" ["string" ...]
	z := zone{}
	for line := range strings.Lines(string(dns)) {
		name, _, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		var txt strings.Builder
		for _, m := range quoted.FindAllStringSubmatch(line, -1) {
			txt.WriteString(m[1])
		}
		z[strings.ToLower(strings.TrimSuffix(name, "."))] = record{txts: []string{txt.String()}}
	}
	if len(z) != 2 {
		t.Fatalf("%d key records, want 2", len(z))
	}
	msg, err := os.ReadFile(filepath.Join(dir, "rfc8463-A3-signed-message.eml"))
	if err != nil {
		t.Fatal(err)
	}
	got := verifyAsMilter(t, msg, z.lookupTXT)
	want := []Result{
		{Status: Pass, Domain: "football.example.com", Selector: "brisbane", Identifier: "@football.example.com",
			Algorithm: "ed25519-sha256", BPrefix: "/gCrinpc"},
		{Status: Pass, Domain: "football.example.com", Selector: "test", Identifier: "@football.example.com",
			Algorithm: "rsa-sha256", BPrefix: "F45dVWDf"},
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
	exceptions := map[string]string{
		// x=1667930064 (2022-11-09): mail-auth verifies at t=1667843664,
		// but go-msgauth checks x= against its own time.Now.
		"005.txt": "permerror",
	}
	pass := 0
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			records, msg, _ := bytes.Cut(data, []byte("\n\n"))
			z := zone{}
			for line := range strings.Lines(string(records)) {
				name, value, _ := strings.Cut(strings.TrimSpace(line), " ")
				z[strings.ToLower(name)] = record{txts: []string{value}}
			}
			got := verifyAsMilter(t, toCRLF(msg), z.lookupTXT)
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
func mailDKIMZone(t *testing.T, path string) zone {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	z := zone{}
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
			z[name] = record{err: &net.DNSError{Err: strings.Trim(value, "~"), Name: name, IsTemporary: true}}
		case value == `""`:
			z[name] = record{txts: []string{""}}
		default:
			z[name] = record{txts: []string{value}}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return z
}

// TestMailDKIM runs the Mail::DKIM corpus. Its expectations are Mail::DKIM's
// (lenient) ones; they are translated to this verifier's:
//   - rsa-sha1 or an RSA key under 1024 bits: permerror (RFC 8301), even
//     where Mail::DKIM says pass or fail;
//   - DomainKey-Signature (RFC 4870, historic) is not verified: no result;
//   - a DNS error (SERVFAIL, timeout) when fetching the key: temperror
//     (RFC 6376 section 6.1.2), where Mail::DKIM says invalid;
//   - "invalid": permerror;
//
// and the remaining differences are listed in exceptions.
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
	// Where this verifier differs from the translated expectation, and why.
	exceptions := map[string]struct{ want, why string }{
		"mine_ietf01_3.txt": {"permerror", "pre-standard draft signature without v=1, which RFC 6376 section 3.5 requires"},
		"mine_ietf01_4.txt": {"permerror", "pre-standard draft signature without v=1, which RFC 6376 section 3.5 requires"},
	}

	counts := map[string]int{}
	for _, c := range exp.Cases {
		t.Run(filepath.Base(c.File), func(t *testing.T) {
			raw, err := os.ReadFile(filepath.Join(dir, c.File))
			if err != nil {
				t.Fatal(err)
			}
			var want []string
			for _, sig := range c.Signatures {
				if sig.Header != "DKIM-Signature" {
					continue
				}
				bits, numeric := sig.KeyBits.(float64)
				dnsErr, _ := sig.KeyBits.(string)
				switch {
				case strings.HasPrefix(dnsErr, "~~"):
					// The key lookup comes before the check of a=.
					want = append(want, "temperror")
				case sig.A == nil:
					// No a= tag: the signature is unparseable.
					want = append(want, "permerror")
				case *sig.A == "rsa-sha1", numeric && bits < 1024:
					want = append(want, "permerror")
				case c.Expected == "pass":
					want = append(want, "pass")
				case c.Expected == "fail":
					want = append(want, "fail")
				default:
					want = append(want, "permerror")
				}
			}
			wantS := strings.Join(want, ",")
			if ex, ok := exceptions[filepath.Base(c.File)]; ok {
				wantS = ex.want
			}
			// Mail::DKIM's corpus mixes LF and CRLF files; the body is fed
			// as it is, exercising the lone-LF handling.
			got := verifyAsMilter(t, raw, z.lookupTXT)
			if statuses(got) != wantS {
				t.Errorf("got %q %v, want %q (Mail::DKIM: %s)", statuses(got), errs(got), wantS, c.Expected)
				return
			}
			counts[c.Expected+"->"+wantS]++
			t.Logf("%s: %v", statuses(got), errs(got))
		})
	}
	t.Logf("Mail::DKIM: %d cases; matching, by Mail::DKIM result -> ours: %v", len(exp.Cases), counts)
}

func errs(rs []Result) []string {
	var s []string
	for _, r := range rs {
		s = append(s, fmt.Sprint(r.Err))
	}
	return s
}
