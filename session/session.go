// Package session is the DMARC session of one milter connection: it
// collects each message from the MTA's events (package milter) into a
// policy.Message, running SPF at MAIL FROM and DKIM while the header and
// body stream; at end of message it has policy judge it, acts on the
// verdict (reply, Authentication-Results, quarantine), writes one summary
// log line, and hands the policy.Judged message to the Consumers (failure
// and aggregate reports) before the MTA gets its answer.
package session

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/dmarc-milter/dmarc-milter/milter"
	"github.com/dmarc-milter/dmarc-milter/policy"
	"github.com/dmarc-milter/dmarc-milter/policy/dkim"
	"github.com/dmarc-milter/dmarc-milter/policy/spf"
)

// Settings configure DMARC sessions.
type Settings struct {
	Evaluator *policy.Evaluator
	// LookupTXT is the DNS lookup DKIM key queries go through.
	LookupTXT func(ctx context.Context, name string) ([]string, error)
	// PrefetchTXT, if set, starts a TXT lookup without waiting for it
	// (DKIM keys, at end of header); see dkim.Options.Prefetch.
	PrefetchTXT func(name string)
	// DKIMKeys keeps parsed DKIM keys across messages (nil: none kept).
	DKIMKeys *dkim.KeyCache
	// MaxDKIMSignatures bounds the signatures verified per message.
	MaxDKIMSignatures int
	// CheckTimeout bounds the DNS work of each check of a message, from
	// when that check starts: SPF at MAIL FROM, each DKIM key lookup, and
	// DMARC at end of message. The time the client takes to send the
	// message never counts.
	CheckTimeout time.Duration
	Log          zerolog.Logger
	Now          func() time.Time
	// Consumers get every judged message, in order, after the action is
	// decided and before the MTA gets its answer (failure reports make
	// theirs durable there). Each decides itself what it wants of it.
	Consumers []Consumer
	// Metrics, if set, is told each judged message's outcome and how long
	// its stages took.
	Metrics Metrics
	// KeepBody is how many body bytes to keep for the consumers (failure
	// reports that attach the whole message); 0 keeps none. At most
	// KeepBody+1 bytes are kept, so a consumer can tell a cut body.
	KeepBody int
	// MaxHeaderBytes and MaxHeaderFields bound the header one message may
	// make the session keep (for DKIM and reports); 0 means the defaults
	// (DefaultMaxHeaderBytes, DefaultMaxHeaderFields). Beyond them the
	// fields are no longer kept: the message's DKIM signatures are
	// permerror (dkim.ErrHeaderTooLarge), DMARC goes on with SPF, and a
	// report carries the header as far as it was kept. The From fields and
	// the Authentication-Results fields to remove are still seen.
	MaxHeaderBytes, MaxHeaderFields int
}

// DefaultCheckTimeout bounds each check's DNS time when
// Settings.CheckTimeout is not set.
const DefaultCheckTimeout = 20 * time.Second

// Header bounds by default: ten times Postfix's header_size_limit for one
// field, and far more fields than any legitimate message has.
const (
	DefaultMaxHeaderBytes  = 1 << 20
	DefaultMaxHeaderFields = 1000
)

// A Consumer takes judged messages: failure reports and aggregate
// reports. Submit is called before the MTA gets its answer, so
// it must not wait on the network; the Judged message is shared and must
// not be changed.
type Consumer interface {
	Submit(j *policy.Judged)
}

// Metrics receives the outcome of each judged message (the daemon's
// Prometheus metrics). Message must be cheap and not block.
type Metrics interface {
	Message(v *policy.Verdict, st Stages)
}

// Stages are how long a message's checks took: SPF (at MAIL FROM), DKIM
// (what end of message waited for the signatures), DMARC (the evaluation
// and the decision) and Total, from MAIL FROM to the reply.
type Stages struct {
	SPF, DKIM, DMARC, Total time.Duration
}

// ConsumerFunc makes a function a Consumer.
type ConsumerFunc func(j *policy.Judged)

// Submit calls f(j).
func (f ConsumerFunc) Submit(j *policy.Judged) { f(j) }

// NewHandler returns a Handler factory for milter.Server.NewHandler.
func NewHandler(s Settings) func() milter.Handler {
	if s.Now == nil {
		s.Now = time.Now
	}
	if s.CheckTimeout <= 0 {
		s.CheckTimeout = DefaultCheckTimeout
	}
	if s.MaxHeaderBytes <= 0 {
		s.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if s.MaxHeaderFields <= 0 {
		s.MaxHeaderFields = DefaultMaxHeaderFields
	}
	return func() milter.Handler { return &session{set: &s} }
}

// session is the state of one milter connection: what lasts for the
// connection (client address, HELO) and the current message.
type session struct {
	set *Settings

	clientIP   net.IP
	clientHost string
	// local: the MTA gave no network address for the client (unix
	// socket, local submission); an inet client whose address does not
	// parse is not local.
	local bool
	helo  string
	msg   *message
}

// message is the state of one message, from MAIL FROM to end of message or
// abort.
type message struct {
	ctx    context.Context
	cancel context.CancelFunc
	// msg is what the session collects for policy and the consumers.
	msg policy.Message

	// forged lists the 1-based indexes, among Authentication-Results
	// fields, of those that carry our authserv-id.
	forged  []int
	arCount int
	// headerBytes counts the header so far; tooLarge is set once it
	// outgrew the bounds, and no more fields are kept.
	headerBytes int
	tooLarge    bool
	// tooManyForged: more Authentication-Results fields of ours than
	// MaxHeaderFields, too many to remove.
	tooManyForged bool
	// spfTime is how long the SPF checks took.
	spfTime time.Duration

	dkim *dkim.Verifier
}

// checkSPF evaluates the MAIL FROM and HELO identities. A library panic
// must not take the daemon down: the checks become permerrors, logged.
func (s *session) checkSPF(ctx context.Context, from string) (mail, helo spf.Result) {
	defer func() {
		if p := recover(); p != nil {
			s.set.Log.Error().Str("panic", fmt.Sprint(p)).Str("mail_from", from).Msg("panic in SPF check")
			err := fmt.Errorf("spf: check failed: %v", p)
			mail = spf.Result{Status: spf.PermError, Identity: spf.IdentityMailFrom, Err: err}
			helo = spf.Result{Status: spf.PermError, Identity: spf.IdentityHelo, Err: err}
		}
	}()
	return s.set.Evaluator.SPF(ctx, s.clientIP, s.helo, from)
}

func (s *session) Connect(c *milter.Conn, host string, addr net.IP) milter.Reply {
	s.clientHost, s.clientIP = host, addr
	s.local = !c.ClientHasAddress()
	if addr == nil && !s.local {
		s.set.Log.Warn().Str("client_host", host).Msg("client address does not parse: the client is not trusted")
	}
	return milter.Continue
}

func (s *session) Helo(c *milter.Conn, name string) milter.Reply {
	s.helo = name
	return milter.Continue
}

func (s *session) MailFrom(c *milter.Conn, reversePath string, args []string) milter.Reply {
	s.reset()
	// The message's context ends with the message; each check bounds its
	// own DNS time (Settings.CheckTimeout).
	ctx, cancel := context.WithCancel(context.Background())
	from := spf.ReversePath(reversePath)
	m := &message{ctx: ctx, cancel: cancel, msg: policy.Message{
		Arrival:      s.set.Now(),
		ClientIP:     s.clientIP,
		ClientHost:   s.clientHost,
		LocalClient:  s.local,
		Helo:         s.helo,
		MailFrom:     from,
		AuthUser:     c.Macro("{auth_authen}"),
		LeadingSpace: c.LeadingSpace(),
	}}
	// SPF needs only the envelope, so it runs now. With the no-reply
	// options the MTA does not wait for this: it goes on sending the
	// header and body, which queue in the socket meanwhile, so DNS time
	// overlaps the transfer without a goroutine per message.
	spfCtx, spfCancel := context.WithTimeout(ctx, s.set.CheckTimeout)
	t0 := s.set.Now()
	m.msg.SPF, m.msg.HeloSPF = s.checkSPF(spfCtx, from)
	m.spfTime = s.set.Now().Sub(t0)
	spfCancel()
	m.dkim = dkim.NewVerifier(ctx, dkim.Options{
		LookupTXT:     s.set.LookupTXT,
		Prefetch:      s.set.PrefetchTXT,
		MaxSignatures: s.set.MaxDKIMSignatures,
		LeadingSpace:  c.LeadingSpace(),
		LookupTimeout: s.set.CheckTimeout,
		Keys:          s.set.DKIMKeys,
		Now:           s.set.Now,
	})
	s.msg = m
	return milter.Continue
}

// RcptTo notes the domain of the first recipient (aggregate reports'
// envelope_to; asked for only when they record it).
func (s *session) RcptTo(c *milter.Conn, rcpt string, args []string) milter.Reply {
	m := s.msg
	if m == nil || m.msg.RcptDomain != "" {
		return milter.Continue
	}
	addr := spf.ReversePath(rcpt)
	if at := strings.LastIndexByte(addr, '@'); at >= 0 && at < len(addr)-1 {
		m.msg.RcptDomain = strings.ToLower(strings.TrimSuffix(addr[at+1:], "."))
	}
	return milter.Continue
}

func (s *session) Header(c *milter.Conn, name, value string) milter.Reply {
	m := s.msg
	if m == nil {
		return milter.Continue // out of order; ignored
	}
	m.headerBytes += len(name) + len(value) + 3
	if !m.tooLarge && (len(m.msg.Header) >= s.set.MaxHeaderFields || m.headerBytes > s.set.MaxHeaderBytes) {
		m.tooLarge = true
		m.dkim.HeaderTooLarge()
		s.set.Log.Warn().Int("fields", len(m.msg.Header)).Int("bytes", m.headerBytes).
			Int("max_header_fields", s.set.MaxHeaderFields).Int("max_header_size", s.set.MaxHeaderBytes).
			Msg("header over the bounds: no more fields kept, DKIM not verified")
	}
	if !m.tooLarge {
		m.msg.Header = append(m.msg.Header, policy.Field{Name: name, Value: value})
		m.dkim.AddHeader(name, value)
	}
	switch {
	case strings.EqualFold(name, "From"):
		// Two are enough to tell "more than one From field".
		if len(m.msg.From) < 2 {
			m.msg.From = append(m.msg.From, value)
		}
	case strings.EqualFold(name, "Authentication-Results"):
		m.arCount++
		if s.set.Evaluator.IsOurs(value) {
			if len(m.forged) < s.set.MaxHeaderFields {
				m.forged = append(m.forged, m.arCount)
			} else {
				m.tooManyForged = true
			}
		}
	}
	return milter.Continue
}

func (s *session) EndOfHeaders(c *milter.Conn) milter.Reply {
	m := s.msg
	if m == nil {
		return milter.Continue
	}
	if err := m.dkim.EndHeaders(); err != nil {
		s.set.Log.Debug().Err(err).Msg("dkim: header")
	}
	// The From field is known: start the Author Domain's policy lookup
	// (RFC 9989 section 4.10.1) while the body arrives, as the DKIM key
	// lookups are; the evaluation at end of message joins it or finds it
	// cached.
	if s.set.PrefetchTXT != nil {
		if author, err := m.msg.Author(); err == nil {
			for _, d := range author.Domains {
				s.set.PrefetchTXT("_dmarc." + d + ".")
			}
		}
	}
	return milter.Continue
}

func (s *session) Body(c *milter.Conn, chunk []byte) milter.Reply {
	m := s.msg
	if m == nil {
		return milter.Continue
	}
	m.dkim.WriteBody(chunk)
	if keep := s.set.KeepBody + 1 - len(m.msg.Body); s.set.KeepBody > 0 && keep > 0 {
		m.msg.Body = append(m.msg.Body, chunk[:min(keep, len(chunk))]...)
	}
	return milter.Continue
}

func (s *session) EndOfMessage(c *milter.Conn) milter.Reply {
	m := s.msg
	if m == nil {
		return milter.Continue
	}
	defer s.reset()

	msg := &m.msg
	t0 := s.set.Now()
	msg.DKIM = m.dkim.Close()
	t1 := s.set.Now()
	msg.QueueID = c.Macro("i")
	msg.HeaderTruncated = m.tooLarge
	ev := s.set.Evaluator
	ctx, cancel := context.WithTimeout(m.ctx, s.set.CheckTimeout)
	defer cancel()
	v := ev.Decide(ctx, msg)
	t2 := s.set.Now()

	reply := milter.Continue
	ar := policy.AuthenticationResults(ev.AuthservID(), v, msg.MailFrom, msg.Helo)
	switch {
	case m.tooManyForged:
		// Authentication-Results fields claiming to be ours that cannot
		// all be removed must not reach the mailbox.
		reply = milter.SMTPReply(550, "5.7.1", "Message rejected: too many Authentication-Results header fields")
		s.set.Log.Warn().Int("max_header_fields", s.set.MaxHeaderFields).
			Msg("more Authentication-Results fields of this host than can be removed: rejected")
	case v.Action == policy.Reject || v.Action == policy.TempFail:
		reply = milter.SMTPReply(v.Code, v.Enhanced, v.Text)
	default:
		s.stamp(c, m, ar, v)
	}
	s.logSummary(m, v)
	if s.set.Metrics != nil {
		s.set.Metrics.Message(&v, Stages{SPF: m.spfTime, DKIM: t1.Sub(t0), DMARC: t2.Sub(t1), Total: s.set.Now().Sub(msg.Arrival)})
	}
	j := &policy.Judged{Message: msg, Verdict: v, AuthResults: ar}
	for _, c := range s.set.Consumers {
		c.Submit(j)
	}
	return reply
}

// stamp removes forged Authentication-Results fields, inserts ours at the
// top and, for a quarantine, asks the MTA to hold the message.
func (s *session) stamp(c *milter.Conn, m *message, ar string, v policy.Verdict) {
	log := s.set.Log
	// Highest index first, so earlier removals do not renumber later ones.
	for i := len(m.forged) - 1; i >= 0; i-- {
		if err := c.DeleteHeader(m.forged[i], "Authentication-Results"); err != nil {
			log.Warn().Err(err).Msg("cannot remove forged Authentication-Results")
		}
	}
	if err := c.InsertHeader(0, "Authentication-Results", ar); err != nil {
		log.Warn().Err(err).Msg("cannot add Authentication-Results")
	}
	if v.Action == policy.Quarantine {
		if err := c.Quarantine("DMARC policy of " + v.FromDomain + " says quarantine"); err != nil {
			log.Warn().Err(err).Msg("cannot quarantine")
		}
	}
}

func (s *session) logSummary(m *message, v policy.Verdict) {
	msg := &m.msg
	e := s.set.Log.Info()
	if v.Action == policy.TempFail {
		e = s.set.Log.Warn()
	}
	dk := zerolog.Arr()
	for _, d := range v.DKIM {
		dk.Str(d.Domain + ":" + string(d.Status))
	}
	e = e.Str("queue_id", msg.QueueID).
		Str("client_ip", msg.ClientAddr()).
		Str("helo", msg.Helo).
		Str("mail_from", msg.MailFrom).
		Str("from_domain", v.FromDomain).
		Str("spf", string(v.SPF.Status)).
		Str("spf_helo", string(v.HeloSPF.Status)).
		Array("dkim", dk).
		Str("dmarc", string(v.DMARC.Status)).
		Str("policy", string(v.DMARC.Policy)).
		Str("disposition", string(v.Disposition)).
		Str("action", v.Action.String()).
		Int("removed_forged_ar", len(m.forged)).
		Float64("elapsed_ms", float64(s.set.Now().Sub(msg.Arrival).Microseconds())/1000)
	if v.Exempt != "" {
		e = e.Str("exempt", string(v.Exempt))
	}
	if v.FromErr != nil {
		e = e.Str("from_error", v.FromErr.Error())
	}
	if v.DMARC.Err != nil {
		e = e.Str("dmarc_error", v.DMARC.Err.Error())
	}
	e.Msg("verdict")
	for _, err := range v.DMARC.Ignored {
		s.set.Log.Debug().Str("queue_id", msg.QueueID).Err(err).Msg("dmarc: lookup failure ignored: its answer could not change the verdict")
	}
}

func (s *session) Abort(c *milter.Conn) { s.reset() }

func (s *session) Close(c *milter.Conn) { s.reset() }

// reset drops the current message, stopping its background work.
func (s *session) reset() {
	m := s.msg
	if m == nil {
		return
	}
	s.msg = nil
	m.dkim.Abort()
	m.cancel()
}
