package aggregate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/mail"
	"github.com/rs/zerolog"

	"github.com/dmarc-milter/dmarc-milter/policy/dmarc"
	"github.com/dmarc-milter/dmarc-milter/report"
	"github.com/dmarc-milter/dmarc-milter/report/store"
)

// Config configures the Sender.
type Config struct {
	// Interval is the report period (RFC 9990: one day, 00:00 to 24:00 UTC,
	// by default).
	Interval time.Duration
	// SendWindow spreads the sends after a period ends: each policy domain
	// waits a fixed share of it (from a hash of its name), so a fleet
	// does not burst at midnight. 0 sends at once.
	SendWindow time.Duration
	// MaxDestinations bounds the rua addresses one report goes to.
	MaxDestinations int
	// MaxSize bounds one report's gzip in bytes (0: no bound); see
	// Report.encode.
	MaxSize int
	// Retention is how long rows are kept after their report was done.
	Retention time.Duration
	// From is the report address (From field and report_metadata/email).
	From string
	// Owner names this host in report claims: it must differ between the
	// hosts of a fleet and stay the same across restarts.
	Owner string
	Meta  Meta
}

// Sender builds and sends the reports of ended periods: for each policy
// domain and period one host of the fleet claims the report in the store,
// builds it from the rows of all hosts, spools one message per rua address
// and marks the report done. A host that dies between claim and done
// loses the claim when its lease runs out, and another host sends the
// report; a host that comes back after that drops what it had spooled
// (report.Reporter checks the claim before each delivery), so the report is
// neither lost nor doubled.
type Sender struct {
	cfg Config
	st  *store.Store
	rep *report.Reporter
	log zerolog.Logger
	now func() time.Time
}

// NewSender returns a Sender. now is the clock (nil: time.Now).
func NewSender(cfg Config, st *store.Store, rep *report.Reporter, log zerolog.Logger, now func() time.Time) *Sender {
	if now == nil {
		now = time.Now
	}
	return &Sender{cfg: cfg, st: st, rep: rep, log: log.With().Str("component", "aggregate-report").Logger(), now: now}
}

// lease is how long a claim holds: long enough to build and spool a report,
// short enough that a dead host's reports are sent soon after.
func (s *Sender) lease() time.Duration {
	return min(max(s.cfg.Interval/2, 5*time.Second), 10*time.Minute)
}

// delay is domain's share of the send window.
func (s *Sender) delay(domain string) time.Duration {
	if s.cfg.SendWindow <= 0 {
		return 0
	}
	h := fnv.New64a()
	h.Write([]byte(domain))
	return time.Duration(h.Sum64() % uint64(s.cfg.SendWindow))
}

// Run sends the reports that come due until ctx ends, and deletes old rows
// now and then.
func (s *Sender) Run(ctx context.Context) {
	tick := min(max(s.cfg.Interval/8, 200*time.Millisecond), time.Minute)
	t := time.NewTicker(tick)
	defer t.Stop()
	var lastExpire time.Time
	for {
		s.SendDue(ctx)
		if now := s.now(); now.Sub(lastExpire) >= time.Hour && s.cfg.Retention > 0 {
			lastExpire = now
			if n, err := s.st.Expire(ctx, now.Add(-s.cfg.Retention)); err != nil {
				s.log.Error().Err(err).Msg("cannot delete old aggregate report rows")
			} else if n > 0 {
				s.log.Info().Int64("reports", n).Msg("old aggregate report rows deleted")
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// SendDue sends every report whose period ended (plus its domain's share
// of the send window).
func (s *Sender) SendDue(ctx context.Context) {
	now := s.now()
	keys, err := s.st.Due(ctx, s.cfg.Interval, now)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Error().Err(err).Str("store", s.st.Where).Msg("cannot read the aggregate reports due")
		}
		return
	}
	for _, k := range keys {
		if ctx.Err() != nil {
			return
		}
		end := time.Unix(k.Period, 0).Add(s.cfg.Interval)
		if now.Before(end.Add(s.delay(k.Domain))) {
			continue
		}
		if err := s.Send(ctx, k); err != nil && ctx.Err() == nil {
			s.log.Error().Err(err).Str("domain", k.Domain).Int64("period", k.Period).Msg("aggregate report not sent; retried later")
		}
	}
}

// Send claims, builds and spools report k. It does nothing if another host
// holds the claim or the report is done.
func (s *Sender) Send(ctx context.Context, k store.Key) error {
	ok, err := s.st.Claim(ctx, k, s.cfg.Owner, s.now(), s.lease())
	if err != nil || !ok {
		return err
	}
	log := s.log.With().Str("domain", k.Domain).Time("period", time.Unix(k.Period, 0).UTC()).Logger()
	rep, err := s.Build(ctx, k)
	if err != nil {
		return err
	}
	var rua []dmarc.URI
	for _, u := range rep.Published.RUA {
		rua = append(rua, dmarc.URI{Address: u})
	}
	dests := s.rep.AggregateDestinations(ctx, k.Domain, rua, s.cfg.MaxDestinations)
	if len(dests) == 0 {
		log.Info().Strs("rua", rep.Published.RUA).Msg("no authorized destination for the aggregate report; not sent")
	}
	for _, to := range dests {
		msg, err := s.Message(rep, to)
		if err != nil {
			return err
		}
		if err := s.rep.SpoolAggregate(k, rep.ID(), to, msg); err != nil {
			return fmt.Errorf("spooling the report to %s: %w", to, err)
		}
	}
	done, err := s.st.Done(ctx, k, s.cfg.Owner, rep.ID(), s.now())
	if err != nil {
		// The spooled messages carry the claim: the sender marks it done
		// before delivering them.
		log.Warn().Err(err).Msg("cannot mark the aggregate report done; the sender will")
	} else if !done {
		log.Warn().Msg("aggregate report claim lost to another host while building; this copy is dropped before delivery")
	}
	ev := log.Info()
	if rep.OmittedRecords > 0 {
		ev = log.Warn().Int("records_left_out", rep.OmittedRecords).Int64("messages_left_out", rep.OmittedMessages)
	}
	ev.Str("report_id", rep.ID()).Int("records", rep.Records).Int64("messages", rep.Messages).Int("size", len(rep.Gzip)).
		Strs("to", dests).Msg("aggregate report spooled")
	return nil
}

// ErrNoRows is returned by Build for a report without rows.
var ErrNoRows = errors.New("aggregate: no rows")

// Build builds report k from the store, all hosts' rows summed.
func (s *Sender) Build(ctx context.Context, k store.Key) (*Report, error) {
	rows, err := s.st.Rows(ctx, k)
	if err != nil {
		return nil, err
	}
	if len(rows) == 0 {
		return nil, ErrNoRows
	}
	pol, err := s.st.PolicyOf(ctx, k)
	if err != nil {
		return nil, err
	}
	if pol == "" {
		pol = marshalPublished(Published{Domain: k.Domain, P: "none"})
	}
	rep, err := build(k, s.cfg.Interval, rows, pol, s.cfg.Meta)
	if err != nil {
		return nil, err
	}
	if err := rep.encode(s.cfg.MaxSize); err != nil {
		return nil, err
	}
	return rep, nil
}

// Message returns the report as a message to one recipient (RFC 9990
// Section 4.5): Subject "Report Domain: ... Submitter: ... Report-ID:
// <...>", a short text part, and the gzip as application/gzip with the
// RFC's file name.
func (s *Sender) Message(rep *Report, to string) ([]byte, error) {
	from, err := mail.ParseAddress(s.cfg.From)
	if err != nil {
		return nil, fmt.Errorf("aggregate: bad report address %q: %w", s.cfg.From, err)
	}
	if from.Name == "" {
		from.Name = "DMARC aggregate reports"
	}
	sub := s.cfg.Meta.Submitter
	var h mail.Header
	h.SetAddressList("From", []*mail.Address{from})
	h.SetAddressList("To", []*mail.Address{{Address: to}})
	h.SetSubject(fmt.Sprintf("Report Domain: %s Submitter: %s Report-ID: <%s>", rep.Key.Domain, sub, rep.ID()))
	h.SetDate(s.now())
	if err := h.GenerateMessageIDWithHostname(sub); err != nil {
		return nil, fmt.Errorf("aggregate: message id: %w", err)
	}
	h.Set("Auto-Submitted", "auto-generated")
	h.SetContentType("multipart/mixed", nil)

	var buf bytes.Buffer
	w, err := message.CreateWriter(&buf, h.Header)
	if err != nil {
		return nil, fmt.Errorf("aggregate: %w", err)
	}
	d := rep.Feedback.Metadata.DateRange
	text := fmt.Sprintf("This is a DMARC aggregate report (RFC 9990) from %s for %s,\r\n"+
		"covering %s to %s UTC: %d messages in %d records.\r\n\r\n"+
		"The report is the attached file %s (gzip-compressed XML).\r\n",
		sub, rep.Key.Domain,
		time.Unix(int64(d.Begin), 0).UTC().Format("2006-01-02 15:04:05"), time.Unix(int64(d.End)+1, 0).UTC().Format("2006-01-02 15:04:05"),
		rep.Messages-rep.OmittedMessages, rep.Records, rep.FileName(sub))
	if rep.OmittedRecords > 0 {
		text += "\r\n" + rep.Feedback.Metadata.Error + ".\r\n"
	}
	var th message.Header
	th.SetContentType("text/plain", map[string]string{"charset": "utf-8"})
	th.Set("Content-Transfer-Encoding", "7bit")
	pw, err := w.CreatePart(th)
	if err != nil {
		return nil, fmt.Errorf("aggregate: %w", err)
	}
	pw.Write([]byte(text))
	pw.Close()

	var ah message.Header
	name := rep.FileName(sub)
	ah.SetContentType("application/gzip", map[string]string{"name": name})
	ah.SetContentDisposition("attachment", map[string]string{"filename": name})
	ah.Set("Content-Transfer-Encoding", "base64")
	ah.Set("Content-Description", "DMARC aggregate report")
	aw, err := w.CreatePart(ah)
	if err != nil {
		return nil, fmt.Errorf("aggregate: %w", err)
	}
	if _, err := aw.Write(rep.Gzip); err != nil {
		return nil, fmt.Errorf("aggregate: %w", err)
	}
	aw.Close()
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("aggregate: %w", err)
	}
	return buf.Bytes(), nil
}
