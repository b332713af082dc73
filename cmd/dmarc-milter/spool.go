package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/dmarc-milter/dmarc-milter/report/outbox"
)

// spoolCommand is "dmarc-milter spool list | show ID | retry ID | drop ID":
// the reports waiting in the spool of the configuration's state_dir. It
// only reads, or rewrites one file atomically, so it is safe while the
// daemon runs. Exit status 1 when the report is not there.
func spoolCommand(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || wantsHelp(args[:1]) {
		fmt.Fprintln(stdout, "usage: dmarc-milter spool list [--config FILE] [--json]\n       dmarc-milter spool show|retry|drop ID [--config FILE] [--json]")
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	verb := args[0]
	fs, configPath := commandFlags("spool "+verb, "the daemon's", stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	rest := args[1:]
	var id string
	if verb != "list" {
		if len(rest) == 0 {
			fmt.Fprintf(stderr, "dmarc-milter: spool %s needs a report ID (see spool list)\n", verb)
			return 2
		}
		id, rest = rest[0], rest[1:]
	}
	if err := fs.Parse(rest); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	cfg, ok := commandConfig(*configPath, stderr)
	if !ok {
		return 2
	}
	dir := spoolDir(cfg)
	// Reports an earlier version left in its own spool directory move here,
	// as the daemon moves them at start (renames: safe beside it).
	for _, old := range legacySpoolDirs(cfg) {
		if _, err := outbox.Migrate(old, dir); err != nil {
			fmt.Fprintf(stderr, "dmarc-milter: spool: %v\n", err)
		}
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "dmarc-milter: spool %s %s: %v\n", verb, id, err)
		return 1
	}
	switch verb {
	case "list":
		entries, err := outbox.List(dir)
		if err != nil {
			return fail(err)
		}
		if *asJSON {
			if entries == nil {
				entries = []outbox.Entry{}
			}
			return writeJSON(stdout, entries)
		}
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tKIND\tDOMAIN\tTO\tATTEMPTS\tNEXT ATTEMPT\tLAST ERROR")
		for _, e := range entries {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", e.ID, e.Kind, e.Domain, e.To, e.Attempts,
				e.NextAttempt.Local().Format(time.DateTime), e.LastError)
		}
		tw.Flush()
		fmt.Fprintf(stdout, "%d reports in %s\n", len(entries), dir)
	case "show":
		e, msg, err := outbox.Read(dir, id)
		if err != nil {
			return fail(err)
		}
		if *asJSON {
			return writeJSON(stdout, struct {
				outbox.Entry
				Message string `json:"message"`
			}{e, string(msg)})
		}
		fmt.Fprintf(stdout, "ID: %s\nKind: %s\nDomain: %s\nFrom: %s\nTo: %s\nQueue ID: %s\nTag: %s\nCreated: %s\nAttempts: %d\nNext attempt: %s\nLast error: %s\n\n",
			e.ID, e.Kind, e.Domain, e.From, e.To, e.QueueID, e.Tag, e.Created.Format(time.RFC3339), e.Attempts,
			e.NextAttempt.Format(time.RFC3339), e.LastError)
		stdout.Write(msg)
	case "retry":
		if err := outbox.Retry(dir, id, time.Now()); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "%s: due now (the daemon sends it within a minute)\n", id)
	case "drop":
		if err := outbox.Drop(dir, id); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "%s: dropped\n", id)
	default:
		fmt.Fprintf(stderr, "dmarc-milter: spool: unknown command %q (want list, show, retry or drop)\n", verb)
		return 2
	}
	return 0
}

func writeJSON(w io.Writer, v any) int {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return 1
	}
	return 0
}
