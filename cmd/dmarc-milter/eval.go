package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/dmarc-milter/dmarc-milter/internal/rfc5322"
	"github.com/dmarc-milter/dmarc-milter/policy"
	"github.com/dmarc-milter/dmarc-milter/policy/dkim"
	"github.com/dmarc-milter/dmarc-milter/report"
	"github.com/dmarc-milter/dmarc-milter/report/aggregate"
	"github.com/dmarc-milter/dmarc-milter/report/store"
	"github.com/dmarc-milter/dmarc-milter/resolver"
	"github.com/dmarc-milter/dmarc-milter/session"
)

// Exit status of eval: what the daemon would answer.
const (
	evalAccept     = 0 // delivered (also quarantine by marking only)
	evalQuarantine = 3 // held in the hold queue
	evalReject     = 4 // 550 5.7.1
	evalTempFail   = 5 // 451 4.7.5
)

// evalCommand is "dmarc-milter eval": the verdict the daemon would reach
// for a message file, with the configuration in force, and a trace of
// every DNS question and rule applied.
func evalCommand(args []string, stdout, stderr io.Writer) int {
	fs, configPath := commandFlags("eval", "the daemon's", stderr)
	ipText := fs.String("ip", "", "the SMTP client's `address` (default: from the message's last Received field)")
	helo := fs.String("helo", "", "the client's HELO `name` (default: from the message's last Received field)")
	mailFrom := fs.String("mail-from", "", "the MAIL FROM `address` (default: the message's Return-Path; <> for the null sender)")
	asJSON := fs.Bool("json", false, "print the verdict and trace as JSON")
	if wantsHelp(args) {
		fs.SetOutput(stdout)
		fmt.Fprintln(stdout, "usage: dmarc-milter eval [--config FILE] [--ip IP] [--helo NAME] [--mail-from ADDR] [--json] [FILE.eml | -]")
		fs.PrintDefaults()
		fmt.Fprintln(stdout, "\nExit status: 0 delivered, 3 quarantined, 4 rejected, 5 deferred (DNS), 1 error, 2 usage.")
		return 0
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 1 {
		fmt.Fprintln(stderr, "dmarc-milter: eval takes one message file (or -)")
		return 2
	}
	var raw []byte
	var err error
	if name := fs.Arg(0); name == "" || name == "-" {
		raw, err = io.ReadAll(os.Stdin)
	} else {
		raw, err = os.ReadFile(name)
	}
	if err != nil {
		fmt.Fprintf(stderr, "dmarc-milter: eval: %v\n", err)
		return 1
	}
	cfg, ok := commandConfig(*configPath, stderr)
	if !ok {
		return 2
	}
	ev, err := evaluate(cfg, raw, *ipText, *helo, *mailFrom)
	if err != nil {
		fmt.Fprintf(stderr, "dmarc-milter: eval: %v\n", err)
		return 1
	}
	if *asJSON {
		writeJSON(stdout, ev)
	} else {
		for _, l := range ev.Trace {
			fmt.Fprintln(stdout, l)
		}
		fmt.Fprintf(stdout, "\nAuthentication-Results: %s\n", ev.AuthenticationResults)
		fmt.Fprintf(stdout, "verdict: %s\n", ev.Verdict)
	}
	switch ev.Action {
	case policy.Quarantine.String():
		return evalQuarantine
	case policy.Reject.String():
		return evalReject
	case policy.TempFail.String():
		return evalTempFail
	}
	return evalAccept
}

// evaluation is what eval found: the daemon's verdict on the message,
// what its reports would make of it, and the trace.
type evaluation struct {
	ClientIP string `json:"client_ip"`
	Helo     string `json:"helo"`
	MailFrom string `json:"mail_from"`
	// Action is what the daemon tells the MTA, Rule the rule that chose
	// it, Reply the SMTP reply ("" when the message is accepted).
	Action string `json:"action"`
	Rule   string `json:"rule"`
	// Enforced is the policy applied to a failure, Overrides why it is
	// milder than requested, Evidence what showed a spoof.
	Enforced              string            `json:"enforced"`
	Overrides             []policy.Override `json:"overrides,omitempty"`
	Evidence              string            `json:"evidence,omitempty"`
	Reply                 string            `json:"reply,omitempty"`
	Verdict               string            `json:"verdict"`
	DMARC                 string            `json:"dmarc"`
	AuthenticationResults string            `json:"authentication_results"`
	// FailureReport is "wanted", or why none is (report.Screen's reason).
	FailureReport string `json:"failure_report"`
	// Aggregate is the message's aggregate report row, nil if it is not
	// counted.
	Aggregate *evalRow `json:"aggregate,omitempty"`
	Trace     []string `json:"trace"`
}

// evalRow is an aggregate report row and the policy domain it counts for.
type evalRow struct {
	Domain string        `json:"domain"`
	Row    aggregate.Row `json:"row"`
}

// tracer records the DNS questions and answers of one evaluation.
type tracer struct {
	r  *resolver.Resolver
	mu sync.Mutex
	tr *[]string
}

func (t *tracer) note(q string, ans []string, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case err != nil:
		*t.tr = append(*t.tr, fmt.Sprintf("  dns: %s -> %v", q, err))
	case len(ans) == 0:
		*t.tr = append(*t.tr, fmt.Sprintf("  dns: %s -> no records", q))
	default:
		*t.tr = append(*t.tr, fmt.Sprintf("  dns: %s -> %s", q, strings.Join(ans, " | ")))
	}
}

func (t *tracer) LookupTXT(ctx context.Context, name string) ([]string, error) {
	txt, err := t.r.LookupTXT(ctx, name)
	t.note("TXT "+name, txt, err)
	return txt, err
}

func (t *tracer) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	mx, err := t.r.LookupMX(ctx, name)
	var s []string
	for _, m := range mx {
		s = append(s, m.Host)
	}
	t.note("MX "+name, s, err)
	return mx, err
}

func (t *tracer) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	ips, err := t.r.LookupIPAddr(ctx, host)
	var s []string
	for _, ip := range ips {
		s = append(s, ip.String())
	}
	t.note("A/AAAA "+host, s, err)
	return ips, err
}

func (t *tracer) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	names, err := t.r.LookupAddr(ctx, addr)
	t.note("PTR "+addr, names, err)
	return names, err
}

func (t *tracer) Exists(ctx context.Context, name string) (bool, error) {
	ok, err := t.r.Exists(ctx, name)
	t.note("exists "+name, []string{fmt.Sprint(ok)}, err)
	return ok, err
}

// receivedRE reads the client of a Received field written by an MTA:
// "from HELO (host [IP])".
var receivedRE = regexp.MustCompile(`(?is)^\s*from\s+(\S+)\s+\((?:[^)\[]*?)\[(?:IPv6:)?([0-9a-fA-F:.]+)\]`)

// evaluate judges raw as the daemon would: through the daemon's own
// pipeline (session.Pipeline), with its settings.
func evaluate(cfg Config, raw []byte, ipText, helo, mailFrom string) (*evaluation, error) {
	header, body, err := rfc5322.Split(raw)
	if err != nil {
		return nil, err
	}
	var trace []string
	say := func(format string, args ...any) { trace = append(trace, fmt.Sprintf(format, args...)) }

	// Defaults from the message itself, said in the trace.
	var received, returnPath string
	for _, f := range header {
		switch {
		case received == "" && strings.EqualFold(f.Name, "Received"):
			received = f.Value
		case returnPath == "" && strings.EqualFold(f.Name, "Return-Path"):
			returnPath = strings.TrimSpace(f.Value)
		}
	}
	if m := receivedRE.FindStringSubmatch(received); m != nil {
		if ipText == "" {
			ipText = m[2]
			say("client address %s: from the message's last Received field (--ip to say otherwise)", ipText)
		}
		if helo == "" {
			helo = m[1]
			say("HELO %s: from the message's last Received field (--helo to say otherwise)", helo)
		}
	}
	if mailFrom == "" && returnPath != "" {
		mailFrom = returnPath
		say("MAIL FROM %s: from the message's Return-Path (--mail-from to say otherwise)", mailFrom)
	}
	ip := net.ParseIP(ipText)
	if ip == nil {
		return nil, fmt.Errorf("no client address: give --ip (the message has no Received field with one)")
	}

	res, err := commandResolver(cfg)
	if err != nil {
		return nil, err
	}
	tr := &tracer{r: res, tr: &trace}
	ev := policy.New(policyConfig(cfg), tr)
	// The daemon's memory of passing networks, from its store when there
	// is one.
	if st, err := existingStore(cfg); err != nil {
		say("known sending networks: not loaded: %v", err)
	} else if st != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, n, err := knownSenders(ctx, ev, res, st, zerolog.Nop())
		cancel()
		st.Close()
		if err != nil {
			say("known sending networks: not loaded: %v", err)
		} else {
			say("known sending networks: %d loaded from the store", n)
		}
	} else {
		say("known sending networks: no store to load them from (the daemon may know more)")
	}
	// The daemon's pipeline, logging nowhere: the trace says it all.
	p := session.NewPipeline(pipelineSettings(cfg, ev, tr.LookupTXT, zerolog.Nop()))
	client := session.Client{IP: ip, Helo: helo, LeadingSpace: true}
	say("the message, checked as the daemon checks it (DNS questions in order):")
	j, _ := p.Evaluate(client, mailFrom, "", nil, header, body, "")
	msg, verdict := j.Message, &j.Verdict

	say("SPF, MAIL FROM <%s> from %s:", msg.MailFrom, ipText)
	say("  spf %s for %s (%s)%s", msg.SPF.Status, msg.SPF.Domain, msg.SPF.Identity, errText(msg.SPF.Err))
	say("  spf %s for the HELO name %s", msg.HeloSPF.Status, helo)
	say("DKIM:")
	if len(msg.DKIM) == 0 {
		say("  no DKIM signature")
	}
	for _, d := range msg.DKIM {
		say("  dkim %s for d=%s s=%s (%s)%s", d.Status, d.Domain, d.Selector, d.Algorithm, errText(d.Err))
		if d.Status != dkim.Pass && d.HeaderSigned {
			say("    its header signature (b=) verifies: only the body changed")
		}
	}
	if a := msg.ARC; a.Status != "" {
		say("ARC:")
		say("  arc %s, %d sets, newest sealed by %s%s", a.Status, a.Sets, orNone(a.Sealer), errText(a.Err))
		if a.Status == dkim.ARCPass {
			say("  the sealer's results: %s", a.Results)
		}
	}
	if msg.HeaderTruncated {
		say("  the header is over max_header_size or max_header_fields: fields past the bound are not kept, DKIM not verified")
	}

	say("DMARC:")
	d := verdict.DMARC
	from := verdict.FromDomain()
	switch {
	case verdict.FromErr != nil:
		say("  the From field cannot be evaluated: %v", verdict.FromErr)
	case d.Record == nil:
		say("  %s: no DMARC policy applies (%s)%s", from, d.Status, errText(d.Err))
	default:
		say("  policy of %s found at %s: p=%s (applies %s%s)", from, d.PolicyDomain, d.Record.Policy, d.Policy,
			map[bool]string{true: ", testing mode t=y: applied as " + string(d.Applied)}[d.Applied != d.Policy])
		switch {
		case d.SPFAligned && d.DKIMAligned:
			say("  SPF and DKIM (%s) passed for identifiers aligned with %s", d.AlignedDKIMDomain, from)
		case d.SPFAligned:
			say("  SPF passed for %s, aligned with %s (aspf=%c)", msg.SPF.Domain, from, d.Record.ASPF)
		case d.DKIMAligned:
			say("  DKIM passed for %s, aligned with %s (adkim=%c)", d.AlignedDKIMDomain, from, d.Record.ADKIM)
		default:
			say("  no identifier that passed is aligned with %s", from)
		}
		say("  dmarc %s%s, requests %s", d.Status, errText(d.Err), verdict.Requested())
	}
	if verdict.Exempt != "" {
		say("local policy: %s: evaluated and stamped, not enforced", verdict.Exempt.Text())
	}
	if verdict.Evidence != "" {
		say("evidence of a spoof (reject_policy %s): %s", cfg.RejectPolicy.Value, verdict.Evidence)
	}
	for _, o := range verdict.Overrides {
		say("override %s: %s", o.Type, o.Comment)
	}
	if verdict.Rule == policy.RuleOverride {
		say("  %s applied as %s", verdict.Requested(), verdict.Enforced)
	}
	out := &evaluation{
		ClientIP: ipText, Helo: helo, MailFrom: msg.MailFrom,
		Action: verdict.Action.String(), Rule: string(verdict.Rule),
		Enforced: string(verdict.Enforced), Overrides: verdict.Overrides, Evidence: verdict.Evidence,
		DMARC:                 string(d.Status),
		AuthenticationResults: j.AuthResults,
	}
	out.Verdict = "250: delivered"
	switch verdict.Action {
	case policy.Quarantine:
		out.Verdict = "250: delivered to the hold queue (quarantine)"
	case policy.Reject, policy.TempFail:
		r := verdict.Reply
		out.Reply = fmt.Sprintf("%d %s %s", r.Code, r.Enhanced, r.Text)
		out.Verdict = out.Reply
	}
	say("what the daemon would do: %s (rule %s)", out.Verdict, verdict.Rule)

	// What the daemon's consumers make of the same Judged message.
	rc := reportConfig(cfg)
	if why := report.Screen(&rc, j); why != "" {
		out.FailureReport = string(why)
		say("failure report: none (%s)", why)
	} else {
		out.FailureReport = "wanted"
		fo, _ := report.Wanted(j)
		var to []string
		for _, u := range d.Record.RUF {
			to = append(to, u.Address)
		}
		say("failure report: wanted (fo=%s matches); to %s, if they authorize it and the limits allow", fo, strings.Join(to, ", "))
	}
	if row, pub, ok := aggregate.RowOf(j, aggregateFacts(cfg)); ok && cfg.AggregateReports {
		out.Aggregate = &evalRow{Domain: pub.Domain, Row: row}
		var rua []string
		for _, u := range pub.RUA {
			rua = append(rua, u.Address)
		}
		say("aggregate report: counted for %s, reported to %s", pub.Domain, strings.Join(rua, ", "))
	} else {
		say("aggregate report: not counted")
	}
	out.Trace = trace
	return out, nil
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return ": " + err.Error()
}

func orNone(s string) string {
	if s == "" {
		return "nobody"
	}
	return s
}

// existingStore opens the daemon's store if there is one (a PostgreSQL
// store, or the SQLite file in state_dir), without creating a SQLite
// file; nil, nil if there is none.
func existingStore(cfg Config) (*store.Store, error) {
	if cfg.Store == "" {
		if _, err := os.Stat(filepath.Join(cfg.StateDir, store.FileName)); err != nil {
			return nil, nil
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return store.Open(ctx, cfg.Store, cfg.StateDir)
}
