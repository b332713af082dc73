package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/dmarc-milter/dmarc-milter/policy/dkim"
	"github.com/dmarc-milter/dmarc-milter/policy/dmarc"
	"github.com/dmarc-milter/dmarc-milter/policy/spf"
	"github.com/dmarc-milter/dmarc-milter/report"
)

// Exit status of check.
const (
	checkOK       = 0 // nothing to say
	checkWarnings = 3 // works, with warnings
	checkProblems = 4 // receivers will not apply what the owner meant
)

// checkReport is what check found, for --json.
type checkReport struct {
	Domain string      `json:"domain"`
	DMARC  checkDMARC  `json:"dmarc"`
	SPF    spf.Tree    `json:"spf"`
	DKIM   []checkDKIM `json:"dkim,omitempty"`
	// Queries are every DNS question asked and its answer, in order.
	Queries  []string `json:"queries"`
	Warnings []string `json:"warnings,omitempty"`
	Problems []string `json:"problems,omitempty"`
}

type checkDMARC struct {
	RecordAt  string `json:"record_at,omitempty"`
	Record    string `json:"record,omitempty"`
	Policy    string `json:"policy,omitempty"` // what applies to the domain
	OrgDomain string `json:"organizational_domain,omitempty"`
	Error     string `json:"error,omitempty"`
	// Destinations says where reports go and whether they may.
	Destinations []string `json:"destinations,omitempty"`
}

type checkDKIM struct {
	Selector string       `json:"selector"`
	Record   string       `json:"record,omitempty"`
	Key      dkim.KeyInfo `json:"key"`
	Error    string       `json:"error,omitempty"`
}

// checkCommand is "dmarc-milter check DOMAIN [--selector S ...]": what a
// receiver sees for a domain, through the daemon's resolver and rules.
func checkCommand(args []string, stdout, stderr io.Writer) int {
	fs, configPath := commandFlags("check", "for its resolvers", stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	var selectors []string
	fs.Func("selector", "a DKIM `selector` to check (repeatable)", func(s string) error {
		selectors = append(selectors, s)
		return nil
	})
	if wantsHelp(args) {
		fs.SetOutput(stdout)
		fmt.Fprintln(stdout, "usage: dmarc-milter check DOMAIN [--selector S ...] [--config FILE] [--json]")
		fs.PrintDefaults()
		fmt.Fprintln(stdout, "\nExit status: 0 fine, 3 warnings, 4 problems, 1 DNS failure or error, 2 usage.")
		return 0
	}
	// The domain may come before the flags.
	var domain string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		domain, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if domain == "" && fs.NArg() == 1 {
		domain = fs.Arg(0)
	} else if fs.NArg() > 0 || domain == "" {
		fmt.Fprintln(stderr, "dmarc-milter: check takes one domain")
		return 2
	}
	cfg, ok := commandConfig(*configPath, stderr)
	if !ok {
		return 2
	}
	rep, temp, err := check(cfg, domain, selectors)
	if err != nil {
		fmt.Fprintf(stderr, "dmarc-milter: check: %v\n", err)
		return 1
	}
	if *asJSON {
		writeJSON(stdout, rep)
	} else {
		printCheck(stdout, rep, isTerminal(stdout))
	}
	switch {
	case temp:
		return 1
	case len(rep.Problems) > 0:
		return checkProblems
	case len(rep.Warnings) > 0:
		return checkWarnings
	}
	return checkOK
}

var obsoleteTagRE = regexp.MustCompile(`(?i)(?:^|;)\s*(pct|rf|ri)\s*=`)

func check(cfg Config, domain string, selectors []string) (*checkReport, bool, error) {
	d, err := dmarc.NormalizeDomain(domain)
	if err != nil {
		return nil, false, err
	}
	res, err := commandResolver(cfg)
	if err != nil {
		return nil, false, err
	}
	rep := &checkReport{Domain: d}
	tr := &tracer{r: res, tr: &rep.Queries}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Duration(cfg.CheckTimeout))
	defer cancel()
	temp := false

	// DMARC: the tree walk, the record that applies, the policy.
	disc, derr := dmarc.Discover(ctx, tr, d)
	rep.DMARC.OrgDomain = disc.OrgDomain
	switch {
	case errors.Is(derr, dmarc.ErrNoRecord):
		rep.DMARC.Error = "no DMARC record applies: receivers do not apply DMARC to this domain"
		rep.Problems = append(rep.Problems, rep.DMARC.Error)
	case errors.Is(derr, dmarc.ErrNoPolicy):
		rep.DMARC.RecordAt = disc.Domain
		rep.DMARC.Error = "the DMARC record at " + disc.Domain + " has no valid p (or an invalid sp or np) and no valid rua: receivers apply no DMARC processing (RFC 9989 section 4.10.1)"
		rep.Problems = append(rep.Problems, rep.DMARC.Error)
	case errors.Is(derr, dmarc.ErrTempError):
		rep.DMARC.Error = derr.Error()
		temp = true
	case derr != nil:
		rep.DMARC.Error = derr.Error()
		rep.DMARC.RecordAt = disc.Domain
		rep.Problems = append(rep.Problems, "the DMARC record at "+disc.Domain+" is malformed: "+derr.Error())
	default:
		rec := disc.Record
		rep.DMARC.RecordAt = disc.Domain
		if txts, err := res.LookupTXT(ctx, "_dmarc."+disc.Domain+"."); err == nil {
			for _, t := range txts {
				if dmarc.IsRecord(t) {
					rep.DMARC.Record = t
				}
			}
		}
		// The library's selection of p, sp or np (RFC 9989 4.10.1).
		exists := true
		if rec.ExistenceMatters(d, disc.Domain) {
			ok, err := tr.Exists(ctx, d)
			if err != nil {
				temp = true
			}
			exists = err != nil || ok
		}
		pol := rec.PolicyFor(d, disc.Domain, exists)
		rep.DMARC.Policy = string(pol)
		if !exists {
			rep.DMARC.Policy += " (np: " + d + " does not exist)"
		}
		if rec.Testing {
			rep.DMARC.Policy += " in testing mode (t=y): applied one step milder"
		}
		if pol == dmarc.PolicyNone {
			rep.Warnings = append(rep.Warnings, "p=none: receivers report but do not act on mail that fails")
		}
		for _, m := range obsoleteTagRE.FindAllStringSubmatch(rep.DMARC.Record, -1) {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s= is obsolete (RFC 9989 removed it); receivers ignore it", strings.ToLower(m[1])))
		}
		for _, w := range rec.Warnings {
			rep.Warnings = append(rep.Warnings, "DMARC record: "+w)
		}
		for _, list := range []struct {
			tag  string
			uris []dmarc.URI
		}{{"rua", rec.RUA}, {"ruf", rec.RUF}} {
			for _, u := range list.uris {
				for _, f := range checkDestination(ctx, tr, disc.Domain, list.tag, u) {
					rep.DMARC.Destinations = append(rep.DMARC.Destinations, f.text)
					if !f.ok {
						rep.Warnings = append(rep.Warnings, f.text)
					}
				}
			}
		}
	}

	// SPF.
	rep.SPF = spf.Walk(ctx, tr, d)
	if rep.SPF.Root.Record == "" && len(rep.SPF.Root.Problems) == 0 && len(rep.SPF.TempErrors) == 0 {
		rep.Warnings = append(rep.Warnings, "no SPF record: SPF gives none, DMARC can pass through DKIM only")
	}
	rep.Problems = append(rep.Problems, rep.SPF.Problems...)
	rep.Warnings = append(rep.Warnings, rep.SPF.Notes...)
	if len(rep.SPF.TempErrors) > 0 {
		temp = true
	}

	// DKIM keys.
	for _, sel := range selectors {
		k := checkDKIM{Selector: sel}
		name := sel + "._domainkey." + d + "."
		txts, err := tr.LookupTXT(ctx, name)
		switch {
		case err != nil:
			var de *net.DNSError
			if errors.As(err, &de) && de.IsNotFound {
				k.Error = "no key record at " + name
				rep.Problems = append(rep.Problems, "DKIM selector "+sel+": "+k.Error)
			} else {
				k.Error = err.Error()
				temp = true
			}
		default:
			k.Record = strings.Join(txts, "")
			ki, kerr := dkim.DescribeKey(k.Record)
			k.Key = ki
			if kerr != nil {
				k.Error = kerr.Error()
				rep.Problems = append(rep.Problems, "DKIM selector "+sel+": "+ki.Verdict)
			} else if ki.Verdict != "good" {
				rep.Warnings = append(rep.Warnings, "DKIM selector "+sel+": "+ki.Verdict)
			}
			if ki.Testing {
				rep.Warnings = append(rep.Warnings, "DKIM selector "+sel+": t=y, the domain is testing DKIM")
			}
		}
		rep.DKIM = append(rep.DKIM, k)
	}
	return rep, temp, nil
}

// destFinding is what check says of one report destination.
type destFinding struct {
	text string
	ok   bool
}

// checkDestination says where the reports of one rua or ruf URI of the
// record at policyDomain go, with the reporters' own rules
// (report.Destinations, report.Authorized): nowhere for a URI that is not
// mailto:, and an address outside the domain's organization only if it
// authorized these reports (RFC 9990 Section 3, RFC 9991 Section 3).
func checkDestination(ctx context.Context, r *tracer, policyDomain, tag string, u dmarc.URI) []destFinding {
	dests := report.Destinations([]dmarc.URI{u})
	if len(dests) == 0 {
		return []destFinding{{text: fmt.Sprintf("%s %s: not a mailto: URI with an address; dmarc-milter and most receivers send nothing there", tag, u.Address)}}
	}
	var out []destFinding
	for _, dest := range dests {
		a, err := report.Authorize(ctx, r, policyDomain, dest.Domain)
		switch {
		case err != nil:
			out = append(out, destFinding{text: fmt.Sprintf("%s %s: cannot tell whether it may receive reports (DNS failure: %v)", tag, dest.Address, err)})
		case a == report.SameOrganization:
			out = append(out, destFinding{text: fmt.Sprintf("%s %s: inside %s", tag, dest.Address, policyDomain), ok: true})
		case a == report.ExternalRecord:
			out = append(out, destFinding{text: fmt.Sprintf("%s %s: outside %s, and it has authorized these reports", tag, dest.Address, policyDomain), ok: true})
		default:
			out = append(out, destFinding{text: fmt.Sprintf("%s %s is outside %s and has NOT authorized these reports (%s._report._dmarc.%s): receivers send none there",
				tag, dest.Address, policyDomain, policyDomain, dest.Domain)})
		}
	}
	return out
}

// isTerminal reports whether w is a terminal (colour on, plain when piped).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func printCheck(w io.Writer, rep *checkReport, colour bool) {
	paint := func(code, s string) string {
		if !colour {
			return s
		}
		return "\x1b[" + code + "m" + s + "\x1b[0m"
	}
	head := func(s string) { fmt.Fprintln(w, paint("1", s)) }

	head("DMARC (RFC 9989) for " + rep.Domain)
	shown := map[string]bool{}
	for _, q := range rep.Queries {
		if strings.Contains(q, "_dmarc.") && !shown[q] {
			shown[q] = true
			fmt.Fprintln(w, q)
		}
	}
	switch {
	case rep.DMARC.Error != "":
		fmt.Fprintln(w, "  "+paint("31", rep.DMARC.Error))
	default:
		fmt.Fprintf(w, "  record at %s: %s\n", rep.DMARC.RecordAt, rep.DMARC.Record)
		fmt.Fprintf(w, "  policy for %s: %s\n", rep.Domain, rep.DMARC.Policy)
	}
	if rep.DMARC.OrgDomain != "" {
		fmt.Fprintf(w, "  organizational domain: %s\n", rep.DMARC.OrgDomain)
	}
	for _, d := range rep.DMARC.Destinations {
		fmt.Fprintf(w, "  %s\n", d)
	}

	head("\nSPF (RFC 7208)")
	var tree func(n *spf.Node, indent string)
	tree = func(n *spf.Node, indent string) {
		via := ""
		if n.Via != "" {
			via = n.Via + ":"
		}
		rec := n.Record
		if rec == "" {
			rec = "(no SPF record)"
		}
		fmt.Fprintf(w, "%s%s%s  %s  [%d lookups]\n", indent, via, n.Domain, rec, n.Lookups)
		for _, p := range n.Problems {
			fmt.Fprintf(w, "%s  %s\n", indent, paint("31", p))
		}
		for _, p := range n.Notes {
			fmt.Fprintf(w, "%s  %s\n", indent, paint("33", p))
		}
		for _, c := range n.Children {
			tree(c, indent+"  ")
		}
	}
	tree(rep.SPF.Root, "  ")
	fmt.Fprintf(w, "  DNS-lookup terms: %d of at most %d; void lookups: %d of at most %d\n",
		rep.SPF.Lookups, spf.MaxLookups, rep.SPF.Void, spf.MaxVoidLookups)
	for _, e := range rep.SPF.TempErrors {
		fmt.Fprintln(w, "  "+paint("33", "DNS failure: "+e))
	}

	if len(rep.DKIM) > 0 {
		head("\nDKIM keys (RFC 6376, RFC 8463, RFC 8301)")
		for _, k := range rep.DKIM {
			if k.Record == "" {
				fmt.Fprintf(w, "  %s: %s\n", k.Selector, paint("31", k.Error))
				continue
			}
			flags := ""
			if k.Key.Strict {
				flags += " t=s"
			}
			if k.Key.Testing {
				flags += " t=y"
			}
			verdict := k.Key.Verdict
			if k.Error != "" {
				verdict = paint("31", verdict)
			}
			fmt.Fprintf(w, "  %s: %s %d bits%s: %s\n", k.Selector, k.Key.Type, k.Key.Bits, flags, verdict)
		}
	}

	if len(rep.Warnings)+len(rep.Problems) > 0 {
		head("\nFindings")
	}
	for _, p := range rep.Problems {
		fmt.Fprintln(w, "  "+paint("31", "problem: "+p))
	}
	for _, wn := range rep.Warnings {
		fmt.Fprintln(w, "  "+paint("33", "warning: "+wn))
	}
}
