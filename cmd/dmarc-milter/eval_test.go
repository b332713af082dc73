package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// eval against the test DNS server: the verdict the daemon would reach,
// the trace of DNS questions and rules, defaults from the message, and
// the exit status.
func TestEval(t *testing.T) {
	dnsSrv, bin := daemonPrereqs(t)
	conf := writeFile(t, fmt.Sprintf("dns = [%q]\nauthserv_id = \"mx.cli.example\"\n", dnsSrv.Addr))
	spoofMsg := writeFile(t, "Return-Path: <ceo@pass.example>\n"+
		"Received: from attacker.example (unknown [203.0.113.66])\n\tby mx.cli.example (Postfix) with ESMTP id 4AB\n\tfor <rcpt@cli.example>; Mon, 30 Nov 2026 10:00:00 +0000\n"+
		"From: CEO <ceo@pass.example>\nTo: rcpt@cli.example\nSubject: wire the money\n\nPlease.\n")
	legitMsg := writeFile(t, "From: Alice <alice@pass.example>\nTo: rcpt@cli.example\nSubject: hello\n\nHi.\n")
	eval := func(args ...string) (string, string, int) {
		return runBin(bin, append([]string{"eval", "--config", conf}, args...)...)
	}

	out, errOut, code := eval(spoofMsg)
	if code != evalReject {
		t.Errorf("spoof: exit %d, want %d\n%s%s", code, evalReject, out, errOut)
	}
	wantContains(t, "spoof", out,
		"client address 203.0.113.66: from the message's last Received field",
		"HELO attacker.example: from the message's last Received field",
		"MAIL FROM <ceo@pass.example>: from the message's Return-Path",
		"dns: TXT _dmarc.pass.example. -> v=DMARC1; p=reject",
		"spf fail for pass.example",
		"no identifier that passed is aligned with pass.example",
		"550 5.7.1 Message rejected: DMARC policy of pass.example says reject",
		"failure report: wanted",
		"aggregate report: counted for pass.example",
		"Authentication-Results: mx.cli.example;",
	)

	out, _, code = eval("--ip", "192.0.2.10", "--helo", "mx.example", "--mail-from", "alice@pass.example", "--json", legitMsg)
	var ev evaluation
	if err := json.Unmarshal([]byte(out), &ev); err != nil {
		t.Fatalf("--json: %v\n%s", err, out)
	}
	if code != evalAccept || ev.Action != "accept" || ev.DMARC != "pass" || !strings.Contains(strings.Join(ev.Trace, "\n"), "SPF passed for pass.example, aligned with pass.example") {
		t.Errorf("legitimate: exit %d %+v", code, ev)
	}

	// A list post of the p=reject domain: quarantined, and the trace and
	// the JSON say why (RFC 9989 section 7.4).
	listMsg := writeFile(t, "List-Id: <talk.lists.example>\nFrom: Bob <bob@pass.example>\nTo: rcpt@cli.example\nSubject: list\n\nHi.\n")
	out, _, code = eval("--ip", "198.51.100.20", "--helo", "mx.lists.example", "--mail-from", "talk-bounces@lists.example", "--json", listMsg)
	ev = evaluation{}
	if err := json.Unmarshal([]byte(out), &ev); err != nil {
		t.Fatalf("--json: %v\n%s", err, out)
	}
	trace := strings.Join(ev.Trace, "\n")
	if code != evalQuarantine || ev.Rule != "override" || ev.Enforced != "quarantine" || len(ev.Overrides) != 1 || ev.Overrides[0].Type != "mailing_list" ||
		!strings.Contains(trace, "override mailing_list: mailing list, List-Id") || !strings.Contains(trace, "reject applied as quarantine") ||
		!strings.Contains(ev.Evidence, "no signature of pass.example") {
		t.Errorf("list post: exit %d %+v", code, ev)
	}

	if _, errOut, code := eval(legitMsg); code != 1 || !strings.Contains(errOut, "give --ip") {
		t.Errorf("no client address: exit %d %q", code, errOut)
	}
	if out, _, code := eval("--help"); code != 0 || !strings.Contains(out, "Exit status") {
		t.Errorf("help: %d %s", code, out)
	}
}
