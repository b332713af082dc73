package report

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dmarc-milter/dmarc-milter/policy"
	"github.com/dmarc-milter/dmarc-milter/policy/dmarc"
	"github.com/dmarc-milter/dmarc-milter/policy/spf"
)

// Spool files are named <id>.report and hold one line of JSON (the
// envelope) followed by the report message. Temporary files start with
// ".tmp-" and the writing Reporter's instance; at start-up those of other
// instances (a crashed process) are removed, never those being written now
// by sessions that submit while the sender starts.
const (
	spoolExt  = ".report"
	tmpPrefix = ".tmp-"
)

// envelope is the delivery state of one spooled report.
type envelope struct {
	ID          string    `json:"id"`
	From        string    `json:"from"`
	To          string    `json:"to"`
	Domain      string    `json:"domain"` // reported domain, for logs
	QueueID     string    `json:"queue_id,omitempty"`
	Created     time.Time `json:"created"`
	Attempts    int       `json:"attempts"`
	NextAttempt time.Time `json:"next_attempt"`
	LastError   string    `json:"last_error,omitempty"`
	// Kind is "" for a failure report, kindAggregate for an aggregate
	// report; Period and ReportID then name the report (its claim in the
	// store, with Domain).
	Kind     string `json:"kind,omitempty"`
	Period   int64  `json:"period,omitempty"`
	ReportID string `json:"report_id,omitempty"`
}

const kindAggregate = "aggregate"

// noun names the kind of report in logs.
func (e envelope) noun() string {
	if e.Kind == kindAggregate {
		return "aggregate report"
	}
	return "failure report"
}

// entry is a spooled report known to the sender.
type entry struct {
	env  envelope
	path string
}

// prepareSpool creates dir and checks that files can be written there.
func prepareSpool(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("report: spool directory: %w", err)
	}
	f, err := os.CreateTemp(dir, tmpPrefix+"probe-")
	if err != nil {
		return fmt.Errorf("report: spool directory %s is not writable: %w", dir, err)
	}
	name := f.Name()
	f.Close()
	if err := os.Remove(name); err != nil {
		return fmt.Errorf("report: spool directory %s: %w", dir, err)
	}
	return nil
}

func newID(now time.Time) string {
	var b [6]byte
	rand.Read(b[:])
	return fmt.Sprintf("%s-%s", now.UTC().Format("20060102T150405.000000000"), hex.EncodeToString(b[:]))
}

// writeSpoolFile writes env and msg to path atomically and durably: a
// temporary file (named with prefix) in the same directory, fsync, rename,
// fsync of the directory.
func writeSpoolFile(path, prefix string, env envelope, msg []byte) error {
	head, err := json.Marshal(env)
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, prefix)
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	w := bufio.NewWriter(f)
	w.Write(head)
	w.WriteByte('\n')
	w.Write(msg)
	if err := w.Flush(); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	ok = true
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// readSpoolFile reads a spool file back.
func readSpoolFile(path string) (envelope, []byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return envelope{}, nil, err
	}
	head, msg, ok := bytes.Cut(b, []byte("\n"))
	if !ok {
		return envelope{}, nil, errors.New("no envelope line")
	}
	var env envelope
	if err := json.Unmarshal(head, &env); err != nil {
		return envelope{}, nil, fmt.Errorf("bad envelope: %w", err)
	}
	if env.From == "" || env.To == "" {
		return envelope{}, nil, errors.New("envelope without sender or recipient")
	}
	return env, msg, nil
}

// removeSpoolFile deletes a delivered or dropped report durably.
func (r *Reporter) removeSpoolFile(path string) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		r.log.Error().Err(err).Str("path", path).Msg("cannot remove spooled failure report")
		return
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		r.log.Warn().Err(err).Str("path", r.conf().SpoolDir).Msg("cannot sync spool directory")
	}
}

// spool writes one report for one recipient and tells the sender.
func (r *Reporter) spool(f *policy.Judged, to string, msg []byte) bool {
	now := r.now()
	env := envelope{
		ID:          newID(now),
		From:        r.envelopeFrom(),
		To:          to,
		Domain:      f.Verdict.FromDomain(),
		QueueID:     f.QueueID,
		Created:     now,
		NextAttempt: now,
	}
	if err := r.spoolEnvelope(env, msg); err != nil {
		r.count(func(s *Stats) { s.SpoolErrors++ })
		r.log.Error().Err(err).Str("path", r.conf().SpoolDir).Str("queue_id", f.QueueID).Str("to", to).
			Msg("cannot write failure report to the spool; report dropped")
		return false
	}
	r.log.Info().Str("queue_id", f.QueueID).Str("domain", env.Domain).Str("to", to).Str("id", env.ID).
		Msg("failure report spooled")
	return true
}

// spoolEnvelope writes one report to the spool and tells the sender.
func (r *Reporter) spoolEnvelope(env envelope, msg []byte) error {
	path := filepath.Join(r.conf().SpoolDir, env.ID+spoolExt)
	if err := writeSpoolFile(path, r.tmpPrefix, env, msg); err != nil {
		return err
	}
	r.mu.Lock()
	r.pending[env.ID] = &entry{env: env, path: path}
	r.stats.Spooled++
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
	return nil
}

// loadSpool removes stale temporary files and registers every spooled
// report, due at once.
func (r *Reporter) loadSpool() { r.scanSpool(true) }

// scanSpool registers the spooled reports not known yet (reports spooled
// by "dmarc-milter report aggregate --send" arrive that way); at start
// (clean) it also removes the temporary files a crash left.
func (r *Reporter) scanSpool(clean bool) {
	des, err := os.ReadDir(r.conf().SpoolDir)
	if err != nil {
		r.log.Error().Err(err).Str("path", r.conf().SpoolDir).Msg("cannot read the failure report spool")
		return
	}
	now := r.now()
	n := 0
	for _, de := range des {
		name := de.Name()
		path := filepath.Join(r.conf().SpoolDir, name)
		switch {
		case clean && strings.HasPrefix(name, tmpPrefix) && !strings.HasPrefix(name, r.tmpPrefix):
			// Left by a crash before its rename: never complete.
			os.Remove(path)
		case strings.HasSuffix(name, spoolExt) && de.Type().IsRegular():
			r.mu.Lock()
			known := r.pending[strings.TrimSuffix(name, spoolExt)]
			r.mu.Unlock()
			if known != nil {
				// "dmarc-milter spool retry" may have made it due sooner.
				if env, _, err := readSpoolFile(path); err == nil {
					r.mu.Lock()
					if env.NextAttempt.Before(known.env.NextAttempt) {
						known.env.NextAttempt = env.NextAttempt
					}
					r.mu.Unlock()
				}
				continue
			}
			env, _, err := readSpoolFile(path)
			if err != nil {
				r.log.Error().Err(err).Str("path", path).Msg("unreadable spooled failure report; removed")
				r.removeSpoolFile(path)
				continue
			}
			env.NextAttempt = now
			r.mu.Lock()
			r.pending[env.ID] = &entry{env: env, path: path}
			r.mu.Unlock()
			n++
		}
	}
	if n > 0 {
		r.log.Info().Int("count", n).Str("path", r.conf().SpoolDir).Msg("reports found in the spool")
	}
}

// process turns one submitted message into spooled reports; its DNS work
// ends with ctx.
func (r *Reporter) process(ctx context.Context, f *policy.Judged) {
	defer func() {
		if p := recover(); p != nil {
			r.suppress(ReasonBuildError)
			r.log.Error().Str("panic", fmt.Sprint(p)).Str("queue_id", f.QueueID).Msg("panic building a failure report")
		}
	}()
	v := &f.Verdict
	log := r.log.With().Str("queue_id", f.QueueID).Str("domain", v.FromDomain()).Logger()

	dests := Destinations(v.DMARC.Record.RUF)
	if len(dests) == 0 {
		r.suppress(ReasonNoDestination)
		return
	}
	// DMARC determines Organizational Domains only when its verdict needs
	// them; the alignment of failed identifiers in the report needs them
	// too (mostly cached tree walks). One that cannot be found aligns
	// nothing but identical names.
	from, _ := dmarc.NormalizeDomain(v.FromDomain())
	orgs := map[string]string{}
	if org, err := dmarc.NormalizeDomain(v.DMARC.OrgDomain); err == nil {
		orgs[from] = org
	}
	a := analyze(f, func(name string) string {
		if org, ok := orgs[name]; ok {
			return org
		}
		org, err := dmarc.OrganizationalDomain(ctx, r.res, name)
		if err != nil {
			log.Debug().Err(err).Str("name", name).Msg("no Organizational Domain for the report's alignment")
		}
		orgs[name] = org
		return org
	})
	if a.spfAligned && f.SPF.Status != spf.Pass && f.SPF.Domain != "" {
		a.spfRecords = r.spfRecords(ctx, f.SPF.Domain)
	}
	policyDomain := v.DMARC.PolicyDomain
	if policyDomain == "" {
		policyDomain = v.FromDomain()
	}
	dedupBase := strings.Join([]string{f.ClientAddr(), strings.ToLower(v.FromDomain()), a.matched.String(), a.authFailure, strings.Join(a.alignment, ",")}, "|")
	for _, d := range dests {
		ok, err := r.authorized(ctx, policyDomain, d.Domain)
		if err != nil {
			log.Warn().Err(err).Str("to", d.Address).Msg("cannot verify external report destination; not sent this time")
		}
		if !ok {
			r.suppress(ReasonUnauthorized)
			if err == nil {
				log.Info().Str("to", d.Address).Msg("external report destination has not authorized reports for this domain; not sent")
			}
			continue
		}
		key := dedupBase + "|" + strings.ToLower(d.Address)
		now := r.now()
		cfg := r.conf()
		reason := r.take(ctx, cfg, key, d.Address, now)
		if reason != "" {
			r.suppress(reason)
			log.Info().Str("to", d.Address).Str("reason", string(reason)).Msg("failure report not sent: suppressed by a limit or de-duplication")
			continue
		}
		msg, err := build(f, a, []string{d.Address}, *cfg, now, false)
		if err == nil && d.MaxSize > 0 && uint64(len(msg)) > d.MaxSize {
			msg, err = build(f, a, []string{d.Address}, *cfg, now, true)
			if err == nil && uint64(len(msg)) > d.MaxSize {
				r.suppress(ReasonTooBig)
				log.Info().Str("to", d.Address).Uint64("max_size", d.MaxSize).Int("size", len(msg)).Msg("failure report larger than the destination's size limit; not sent")
				continue
			}
		}
		if err != nil {
			r.suppress(ReasonBuildError)
			log.Error().Err(err).Msg("cannot build failure report")
			return
		}
		r.spool(f, d.Address, msg)
	}
}
