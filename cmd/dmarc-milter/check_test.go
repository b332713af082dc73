package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
	"github.com/dmarc-milter/dmarc-milter/policy/spf"
)

// check against the test zones (the seed incident's domains among them):
// the tree walk, the policy, SPF with its counts, each key's verdict, the
// findings, plain output when piped, JSON, and the exit status.
func TestCheck(t *testing.T) {
	_, bin := daemonPrereqs(t)
	var zones []string
	for _, f := range []string{"../../testdata/zones/example.zone", "../../testdata/zones/seed.zone"} {
		z, err := dnstest.LoadZoneFile(f)
		if err != nil {
			t.Fatal(err)
		}
		zones = append(zones, z)
	}
	dnsSrv := dnstest.NewServer(t, zones...)
	conf := writeFile(t, fmt.Sprintf("dns = [%q]\n", dnsSrv.Addr))
	run := func(args ...string) (string, int) {
		out, errOut, code := runBin(bin, append([]string{"check"}, append(args, "--config", conf)...)...)
		return out + errOut, code
	}

	out, code := run("pass.example", "--selector", "sel1", "--selector", "ed", "--selector", "weak", "--selector", "missing")
	if code != checkProblems {
		t.Errorf("pass.example: exit %d, want %d (a weak and a missing key)\n%s", code, checkProblems, out)
	}
	wantContains(t, "pass.example", out,
		"dns: TXT _dmarc.pass.example. -> v=DMARC1; p=reject",
		"record at pass.example: v=DMARC1; p=reject",
		"policy for pass.example: reject",
		"organizational domain: pass.example",
		"pass.example  v=spf1 ip4:192.0.2.10 ip6:2001:db8::10 -all  [0 lookups]",
		"DNS-lookup terms: 0 of at most 10",
		"sel1: rsa 2048 bits: good",
		"ed: ed25519 256 bits: good",
		"weak: rsa 512 bits: refused",
		"missing: no key record",
		"ruf failures@reports.example: outside pass.example, and it has authorized these reports",
		"rua dmarc@pass.example: inside pass.example",
	)
	if strings.Contains(out, "\x1b[") {
		t.Errorf("colour codes when piped:\n%q", out)
	}

	// The seed incident: the spoofed domains publish p=reject with strict
	// alignment and a 2048-bit key; mail.google.com does not exist in the
	// test DNS, a void lookup (a warning: exit status 3).
	out, code = run("kantiflow.xyz", "--selector", "dkim", "--json")
	var rep checkReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("--json: %v\n%s", err, out)
	}
	if code != checkWarnings || rep.DMARC.Policy != "reject" || !strings.Contains(rep.DMARC.Record, "adkim=s") || len(rep.DKIM) != 1 ||
		rep.DKIM[0].Key.Bits != 2048 || rep.SPF.Lookups != 1 || rep.SPF.Void != 1 || len(rep.Problems) != 0 {
		t.Errorf("kantiflow.xyz: exit %d %+v", code, rep)
	}

	out, code = run("none.example")
	if code != checkWarnings || !strings.Contains(out, "warning: p=none") {
		t.Errorf("none.example: exit %d\n%s", code, out)
	}
	out, code = run("pct50.example")
	if !strings.Contains(out, "pct= is obsolete") {
		t.Errorf("pct50.example: exit %d\n%s", code, out)
	}
	if out, code = run("absent.example"); code != checkProblems || !strings.Contains(out, "no DMARC record applies") {
		t.Errorf("absent.example: exit %d\n%s", code, out)
	}

	// The library's policy selection (RFC 9989 4.10.1): p for the domain
	// itself, sp for an existing subdomain, np for one that does not exist.
	for _, tt := range []struct{ domain, policy string }{
		{"org.example", "none"},
		{"exists.org.example", "quarantine"},
		{"ghost.org.example", "reject (np: ghost.org.example does not exist)"},
	} {
		out, _ := run(tt.domain, "--json")
		var rep checkReport
		if err := json.Unmarshal([]byte(out), &rep); err != nil || rep.DMARC.Policy != tt.policy {
			t.Errorf("%s: policy %q, want %q (%v)\n%s", tt.domain, rep.DMARC.Policy, tt.policy, err, out)
		}
	}
	// A record without a valid p and without rua: no DMARC processing.
	if out, code = run("malformed.example"); code != checkProblems || !strings.Contains(out, "no DMARC processing") {
		t.Errorf("malformed.example: exit %d\n%s", code, out)
	}
}

// On a terminal the headings and findings are coloured.
func TestCheckColour(t *testing.T) {
	rep := &checkReport{Domain: "example.com", Problems: []string{"x"}}
	rep.SPF.Root = &spf.Node{Domain: "example.com"}
	var plain, coloured bytes.Buffer
	printCheck(&plain, rep, false)
	printCheck(&coloured, rep, true)
	if strings.Contains(plain.String(), "\x1b[") || !strings.Contains(coloured.String(), "\x1b[31mproblem: x\x1b[0m") {
		t.Errorf("plain %q coloured %q", plain.String(), coloured.String())
	}
}
