package aggregate

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"mime"
	"time"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/mail"
	"github.com/rs/zerolog"

	"github.com/dmarc-milter/dmarc-milter/report"
	"github.com/dmarc-milter/dmarc-milter/report/outbox"
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
// builds it from the rows of all hosts, puts one message per authorized
// rua address in the outbox (package report/outbox) and marks the report
// done. A host that dies between claim and done loses the claim when its
// lease runs out, and another host sends the report; a host that comes
// back after that drops what it had spooled (the outbox asks the Sender's
// claim check before each delivery), so the report is neither lost nor
// doubled.
type Sender struct {
	cfg Config
	st  *store.Store
	out *outbox.Outbox
	res report.Resolver
	log zerolog.Logger
	now func() time.Time
}

// Kind is the outbox kind of aggregate reports.
const Kind = "aggregate"

// NewSender returns a Sender that spools into out (nil: it only builds)
// and checks external destinations through res. With out it registers its
// claim check as out's hook for aggregate reports. now is the clock (nil:
// time.Now).
func NewSender(cfg Config, st *store.Store, out *outbox.Outbox, res report.Resolver, log zerolog.Logger, now func() time.Time) *Sender {
	if now == nil {
		now = time.Now
	}
	s := &Sender{cfg: cfg, st: st, out: out, res: res, log: log.With().Str("component", "aggregate-report").Logger(), now: now}
	if out != nil {
		out.BeforeDelivery(Kind, s.stillOwner)
	}
	return s
}

// tag names a report's claim in its spooled messages: "period report-id".
func tag(k store.Key, reportID string) string { return fmt.Sprintf("%d %s", k.Period, reportID) }

// stillOwner is the outbox hook: whether this host may deliver a spooled
// aggregate report, that is, it holds the report's claim in the store
// (marking it done if a crash came between spooling and marking). A report
// without a claim (resent by hand, or spooled by an earlier version) is
// delivered; so is one whose claim cannot be checked: a duplicate is
// better than a loss.
func (s *Sender) stillOwner(ctx context.Context, env outbox.Envelope) bool {
	var period int64
	var reportID string
	if _, err := fmt.Sscanf(env.Tag, "%d %s", &period, &reportID); err != nil || period == 0 {
		return true
	}
	ok, err := s.st.Done(ctx, store.Key{Period: period, Domain: env.Domain}, s.cfg.Owner, reportID, s.now())
	if err != nil {
		s.log.Error().Err(err).Str("report_id", reportID).Msg("cannot check the aggregate report's claim in the store; delivering it")
		return true
	}
	if !ok {
		// Another host took this report over while this one was down
		// (its claim ran out): that host sends it.
		s.log.Warn().Str("report_id", reportID).Str("domain", env.Domain).Str("to", env.To).
			Msg("aggregate report sent by another host of the fleet; this copy dropped")
	}
	return ok
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
	dests, err := s.Deliver(ctx, rep, true)
	if err != nil {
		return err
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

// Deliver puts one message of rep per authorized rua destination in the
// outbox (at most MaxDestinations; RFC 9990 Section 3: external ones must
// authorize the policy domain, report.Authorized) and returns the
// addresses. claimed says the Sender holds rep's claim: its messages carry
// it for the check before delivery; a report resent by hand carries none.
func (s *Sender) Deliver(ctx context.Context, rep *Report, claimed bool) ([]string, error) {
	domain := rep.Key.Domain
	log := s.log.With().Str("domain", domain).Logger()
	var out []string
	for _, d := range report.Destinations(rep.Published.uris()) {
		if len(out) >= s.cfg.MaxDestinations {
			log.Info().Str("to", d.Address).Int("max", s.cfg.MaxDestinations).Msg("more aggregate report destinations than allowed; left out")
			continue
		}
		ok, err := report.Authorized(ctx, s.res, domain, d.Domain)
		if err != nil {
			log.Warn().Err(err).Str("to", d.Address).Msg("cannot verify external aggregate report destination; left out")
			continue
		}
		if !ok {
			log.Info().Str("to", d.Address).Msg("external aggregate report destination has not authorized reports for this domain; left out")
			continue
		}
		msg, err := s.Message(rep, d.Address)
		if err != nil {
			return out, err
		}
		if d.MaxSize > 0 && uint64(len(msg)) > d.MaxSize {
			log.Warn().Str("to", d.Address).Uint64("max_size", d.MaxSize).Int("size", len(msg)).
				Msg("aggregate report larger than the destination's size limit; not sent there")
			continue
		}
		it := outbox.Item{Kind: Kind, To: d.Address, Domain: domain, Message: msg}
		if claimed {
			it.Tag = tag(rep.Key, rep.ID())
		}
		if _, err := s.out.Put(it); err != nil {
			return out, fmt.Errorf("spooling the report to %s: %w", d.Address, err)
		}
		out = append(out, d.Address)
	}
	if len(out) == 0 {
		log.Info().Any("rua", rep.Published.RUA).Msg("no authorized destination for the aggregate report; not sent")
	}
	return out, nil
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

// ReadMessage reads an aggregate report message as Message writes it (RFC
// 9990 Section 4.5): the file name and the XML of its first
// application/gzip attachment. It is what the tests read our reports with.
func ReadMessage(data []byte) (name string, xml []byte, err error) {
	mr, err := mail.CreateReader(bytes.NewReader(data))
	if err != nil {
		return "", nil, fmt.Errorf("aggregate: reading the report message: %w", err)
	}
	for {
		part, err := mr.NextPart()
		if err != nil {
			break
		}
		ct, params, _ := mime.ParseMediaType(part.Header.Get("Content-Type"))
		if ct != "application/gzip" {
			continue
		}
		zr, err := gzip.NewReader(part.Body)
		if err != nil {
			return "", nil, fmt.Errorf("aggregate: the report's gzip: %w", err)
		}
		x, err := io.ReadAll(zr)
		if err != nil {
			return "", nil, fmt.Errorf("aggregate: the report's gzip: %w", err)
		}
		return params["name"], x, nil
	}
	return "", nil, errors.New("aggregate: no application/gzip part in the message")
}
