// Package session is the message pipeline and the DMARC session of one
// milter connection.
//
// The pipeline (Pipeline, Collector) is the one way a message is judged,
// by the daemon and by "dmarc-milter eval" alike: a Collector takes the
// envelope, header fields and body as they come, running SPF at MAIL
// FROM and DKIM while the header and body stream, keeps what the
// consumers need within the header bounds, notes forged
// Authentication-Results fields, and at the end has policy judge the
// message (policy.Evaluator.Judge). The result is one policy.Judged:
// Message, Verdict (the action that is sent) and our
// Authentication-Results value.
//
// The session (NewHandler) feeds a Collector from the MTA's milter
// events (package milter) and acts on the verdict: the reply, our
// Authentication-Results field with forged ones removed, the quarantine;
// then one summary log line, the metrics, and the Consumers (failure and
// aggregate reports), before the MTA gets its answer. eval feeds a
// Collector from a file (Pipeline.Evaluate) and explains the same Judged.
//
// The flow: socket -> milter -> session (Collector) -> policy (Judge) ->
// Judged -> reply, A-R, log, metrics -> consumers (report: failure
// report, report/aggregate: aggregate row) -> report/outbox.
package session

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/dmarc-milter/dmarc-milter/internal/defaults"
	"github.com/dmarc-milter/dmarc-milter/milter"
	"github.com/dmarc-milter/dmarc-milter/policy"
	"github.com/dmarc-milter/dmarc-milter/policy/dkim"
	"github.com/dmarc-milter/dmarc-milter/policy/spf"
	"github.com/dmarc-milter/dmarc-milter/resolver"
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
	// CheckTimeout bounds the DNS time a whole message waits for, over
	// its two stages: SPF at MAIL FROM, and the DKIM key lookups with
	// DMARC at end of message, which get what SPF left. The time the
	// client takes to send the message never counts; lookups started
	// early (at end of header) run meanwhile. The bound is set with
	// resolver.WithBudget, which the lookups (LookupTXT and the
	// Evaluator's resolver) must apply: the daemon's Resolver does. An
	// answer already cached is used whatever is left.
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
	// ARC validates each message's ARC chain (RFC 8617) with its DKIM
	// signatures, for policy's trusted ARC sealers.
	ARC bool
}

// DefaultCheckTimeout bounds a message's DNS time when
// Settings.CheckTimeout is not set: inside Postfix's milter_command_timeout
// (30 s), which bounds a reply at MAIL FROM, and its
// milter_content_timeout (300 s) for the end of message.
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

// Pipeline judges messages with one set of Settings; it is safe for
// concurrent use, each message having its own Collector.
type Pipeline struct {
	set Settings
}

// NewPipeline returns the pipeline of s, with defaults for its zero
// fields.
func NewPipeline(s Settings) *Pipeline {
	if s.Now == nil {
		s.Now = time.Now
	}
	s.CheckTimeout = defaults.Positive(s.CheckTimeout, DefaultCheckTimeout)
	s.MaxHeaderBytes = defaults.Positive(s.MaxHeaderBytes, DefaultMaxHeaderBytes)
	s.MaxHeaderFields = defaults.Positive(s.MaxHeaderFields, DefaultMaxHeaderFields)
	return &Pipeline{set: s}
}

// Client is what is known of the SMTP client for the whole connection.
type Client struct {
	IP net.IP
	// Host is the MTA's reverse lookup of IP.
	Host string
	// Local: the MTA gave no network address (unix socket, local
	// submission); an inet client whose address does not parse is not
	// local.
	Local bool
	Helo  string
	// LeadingSpace: header values come with the white space after the
	// colon (milter SMFIP_HDR_LEADSPC); Postfix strips it otherwise.
	LeadingSpace bool
}

// Collector is one message on its way through the pipeline, from MAIL
// FROM to End or Abort. It is not safe for concurrent use.
type Collector struct {
	p *Pipeline
	// msg is what is collected for policy and the consumers.
	msg policy.Message

	// forged lists the 1-based indexes, among Authentication-Results
	// fields, of those that carry our authserv-id.
	forged  []int
	arCount int
	// headerBytes counts the header so far; tooLarge is set once it
	// outgrew the bounds, and no more fields are kept.
	headerBytes int
	tooLarge    bool
	// spfTime is how long the SPF checks took (Settings.Now), spfWait
	// the same in real time: what the end of message's budget lacks.
	spfTime, spfWait time.Duration

	dkim *dkim.Verifier
	// fromField holds msg.From's one value without another allocation.
	fromField [1]string
}

// Begin starts a message from client c with the MAIL FROM argument
// reversePath (as the MTA gives it, angle brackets or not) and the SASL
// login authUser ("" if none). SPF runs now: it needs only the envelope.
func (p *Pipeline) Begin(c Client, reversePath, authUser string) *Collector {
	set := &p.set
	from := spf.ReversePath(reversePath)
	m := &Collector{p: p, msg: policy.Message{
		Arrival:      set.Now(),
		ClientIP:     c.IP,
		ClientHost:   c.Host,
		LocalClient:  c.Local,
		Helo:         c.Helo,
		MailFrom:     from,
		AuthUser:     authUser,
		LeadingSpace: c.LeadingSpace,
		// Room for a typical header without growing.
		Header: make([]policy.Field, 0, 16),
	}}
	// With the no-reply options the MTA does not wait for this: it goes
	// on sending the header and body, which queue in the socket
	// meanwhile, so DNS time overlaps the transfer without a goroutine
	// per message.
	m.msg.From = m.fromField[:0]
	t0, w0 := set.Now(), time.Now()
	m.msg.SPF, m.msg.HeloSPF = m.checkSPF(stage(set.CheckTimeout))
	m.spfTime, m.spfWait = set.Now().Sub(t0), time.Since(w0)
	m.dkim = dkim.NewVerifier(dkim.Options{
		LookupTXT:     set.LookupTXT,
		Prefetch:      set.PrefetchTXT,
		MaxSignatures: set.MaxDKIMSignatures,
		LeadingSpace:  c.LeadingSpace,
		Keys:          set.DKIMKeys,
		Now:           set.Now,
		ARC:           set.ARC,
	})
	return m
}

// checkSPF evaluates the MAIL FROM and HELO identities. A library panic
// must not take the daemon down: the checks become permerrors, logged.
func (m *Collector) checkSPF(ctx context.Context) (mail, helo spf.Result) {
	msg := &m.msg
	defer func() {
		if p := recover(); p != nil {
			m.p.set.Log.Error().Str("panic", fmt.Sprint(p)).Str("mail_from", msg.MailFrom).Msg("panic in SPF check")
			err := fmt.Errorf("spf: check failed: %v", p)
			mail = spf.Result{Status: spf.PermError, Identity: spf.IdentityMailFrom, Err: err}
			helo = spf.Result{Status: spf.PermError, Identity: spf.IdentityHelo, Err: err}
		}
	}()
	return m.p.set.Evaluator.SPF(ctx, msg.ClientIP, msg.Helo, msg.MailFrom)
}

// Rcpt notes the domain of the first recipient (aggregate reports'
// envelope_to).
func (m *Collector) Rcpt(rcpt string) {
	if m.msg.RcptDomain != "" {
		return
	}
	addr := spf.ReversePath(rcpt)
	if at := strings.LastIndexByte(addr, '@'); at >= 0 && at < len(addr)-1 {
		m.msg.RcptDomain = strings.ToLower(strings.TrimSuffix(addr[at+1:], "."))
	}
}

// Header takes one header field, its value as the MTA gives it (folded
// with bare LF).
func (m *Collector) Header(name, value string) {
	set := &m.p.set
	m.headerBytes += len(name) + len(value) + 3
	if !m.tooLarge && (len(m.msg.Header) >= set.MaxHeaderFields || m.headerBytes > set.MaxHeaderBytes) {
		m.tooLarge = true
		m.dkim.HeaderTooLarge(m.msg.Header)
		set.Log.Warn().Int("fields", len(m.msg.Header)).Int("bytes", m.headerBytes).
			Int("max_header_fields", set.MaxHeaderFields).Int("max_header_size", set.MaxHeaderBytes).
			Msg("header over the bounds: no more fields kept, DKIM not verified")
	}
	if !m.tooLarge {
		m.msg.Header = append(m.msg.Header, policy.Field{Name: name, Value: value})
	}
	switch {
	case strings.EqualFold(name, "From"):
		// Two are enough to tell "more than one From field".
		if len(m.msg.From) < 2 {
			m.msg.From = append(m.msg.From, value)
		}
	case strings.EqualFold(name, "Authentication-Results"):
		m.arCount++
		if set.Evaluator.IsOurs(value) {
			if len(m.forged) < set.MaxHeaderFields {
				m.forged = append(m.forged, m.arCount)
			} else {
				m.msg.TooManyForgedAR = true
			}
		}
	}
}

// EndHeaders marks the end of the header: the DKIM key lookups and the
// Author Domain's policy lookup start while the body arrives.
func (m *Collector) EndHeaders() {
	set := &m.p.set
	if err := m.dkim.EndHeaders(m.msg.Header); err != nil {
		set.Log.Debug().Err(err).Msg("dkim: header")
	}
	// The From field is known: start the Author Domain's policy lookup
	// (RFC 9989 section 4.10.1) as the DKIM key lookups are; the
	// evaluation at the end joins it or finds it cached.
	if set.PrefetchTXT != nil {
		if author, err := m.msg.Author(); err == nil {
			for _, d := range author.Domains {
				set.PrefetchTXT("_dmarc." + d + ".")
			}
		}
	}
}

// Body takes a chunk of the body (CRLF line ends).
func (m *Collector) Body(chunk []byte) {
	m.dkim.WriteBody(chunk)
	keep := m.p.set.KeepBody
	if room := keep + 1 - len(m.msg.Body); keep > 0 && room > 0 {
		m.msg.Body = append(m.msg.Body, chunk[:min(room, len(chunk))]...)
	}
}

// Forged returns the 1-based indexes, among the message's
// Authentication-Results fields, of those claiming our authserv-id: the
// ones to remove.
func (m *Collector) Forged() []int { return m.forged }

// End judges the message (queueID is the MTA's, "" if none) and returns
// the Judged message and how long its stages took. The Collector is done.
func (m *Collector) End(queueID string) (*policy.Judged, Stages) {
	set := &m.p.set
	defer m.Abort()
	msg := &m.msg
	// The end of the message shares one DNS budget, what SPF left of
	// the message's: the DKIM keys (looked up since the end of the
	// header) and the DMARC policy.
	ctx := stage(max(set.CheckTimeout-m.spfWait, 0))
	t0 := set.Now()
	msg.DKIM = m.dkim.Close(ctx)
	msg.ARC = m.dkim.ARC()
	t1 := set.Now()
	msg.QueueID = queueID
	msg.HeaderTruncated = m.tooLarge
	ev := set.Evaluator
	j := &policy.Judged{Message: msg, Verdict: ev.Judge(ctx, msg)}
	j.AuthResults = policy.AuthenticationResults(ev.AuthservID(), msg, &j.Verdict)
	t2 := set.Now()
	return j, Stages{SPF: m.spfTime, DKIM: t1.Sub(t0), DMARC: t2.Sub(t1), Total: t2.Sub(msg.Arrival)}
}

// stage returns the context of a stage's DNS lookups, bounded by
// budget from now. Contexts and deadlines are in real time, whatever
// Settings.Now says.
func stage(budget time.Duration) context.Context {
	return resolver.WithBudget(context.Background(), time.Now().Add(budget))
}

// Abort drops the message. Calling it again, or after End, does nothing.
func (m *Collector) Abort() {
	if m.dkim != nil {
		m.dkim.Abort()
	}
}

// Evaluate runs a whole message through the pipeline at once: what
// "dmarc-milter eval" does with a file. header holds the fields as an MTA
// hands them to a milter (see Client.LeadingSpace), body the body with
// CRLF line ends.
func (p *Pipeline) Evaluate(c Client, reversePath, authUser string, rcpt []string, header []policy.Field, body []byte, queueID string) (*policy.Judged, Stages) {
	m := p.Begin(c, reversePath, authUser)
	for _, r := range rcpt {
		m.Rcpt(r)
	}
	for _, f := range header {
		m.Header(f.Name, f.Value)
	}
	m.EndHeaders()
	m.Body(body)
	return m.End(queueID)
}

// NewHandler returns a Handler factory for milter.Server.NewHandler.
func NewHandler(s Settings) func() milter.Handler {
	p := NewPipeline(s)
	return func() milter.Handler { return &session{p: p, set: &p.set} }
}

// session is the state of one milter connection: the client (for the
// connection) and the current message.
type session struct {
	p      *Pipeline
	set    *Settings
	client Client
	msg    *Collector
}

func (s *session) Connect(c *milter.Conn, host string, addr net.IP) milter.Reply {
	s.client = Client{IP: addr, Host: host, Local: !c.ClientHasAddress()}
	if addr == nil && !s.client.Local {
		s.set.Log.Warn().Str("client_host", host).Msg("client address does not parse: the client is not trusted")
	}
	return milter.Continue
}

func (s *session) Helo(c *milter.Conn, name string) milter.Reply {
	s.client.Helo = name
	return milter.Continue
}

func (s *session) MailFrom(c *milter.Conn, reversePath string, args []string) milter.Reply {
	s.reset()
	s.client.LeadingSpace = c.LeadingSpace()
	s.msg = s.p.Begin(s.client, reversePath, c.Macro("{auth_authen}"))
	return milter.Continue
}

// RcptTo notes the first recipient (asked for only when aggregate reports
// record envelope_to).
func (s *session) RcptTo(c *milter.Conn, rcpt string, args []string) milter.Reply {
	if s.msg != nil {
		s.msg.Rcpt(rcpt)
	}
	return milter.Continue
}

func (s *session) Header(c *milter.Conn, name, value string) milter.Reply {
	if s.msg != nil { // out of order otherwise; ignored
		s.msg.Header(name, value)
	}
	return milter.Continue
}

func (s *session) EndOfHeaders(c *milter.Conn) milter.Reply {
	if s.msg != nil {
		s.msg.EndHeaders()
	}
	return milter.Continue
}

func (s *session) Body(c *milter.Conn, chunk []byte) milter.Reply {
	if s.msg != nil {
		s.msg.Body(chunk)
	}
	return milter.Continue
}

func (s *session) EndOfMessage(c *milter.Conn) milter.Reply {
	m := s.msg
	if m == nil {
		return milter.Continue
	}
	s.msg = nil
	j, st := m.End(c.Macro("i"))
	v := &j.Verdict

	reply := milter.Continue
	switch v.Action {
	case policy.Reject, policy.TempFail:
		reply = milter.SMTPReply(v.Reply.Code, v.Reply.Enhanced, v.Reply.Text)
		if v.Rule == policy.RuleForgedAR {
			s.set.Log.Warn().Int("max_header_fields", s.set.MaxHeaderFields).
				Msg("more Authentication-Results fields of this host than can be removed: rejected")
		}
	default:
		s.stamp(c, m.Forged(), j)
	}
	s.logSummary(j, len(m.Forged()))
	if s.set.Metrics != nil {
		st.Total = s.set.Now().Sub(j.Arrival)
		s.set.Metrics.Message(v, st)
	}
	for _, c := range s.set.Consumers {
		c.Submit(j)
	}
	return reply
}

// stamp removes forged Authentication-Results fields, inserts ours at the
// top and, for a quarantine, asks the MTA to hold the message.
func (s *session) stamp(c *milter.Conn, forged []int, j *policy.Judged) {
	log := s.set.Log
	// Highest index first, so earlier removals do not renumber later ones.
	for i := len(forged) - 1; i >= 0; i-- {
		if err := c.DeleteHeader(forged[i], "Authentication-Results"); err != nil {
			log.Warn().Err(err).Msg("cannot remove forged Authentication-Results")
		}
	}
	if err := c.InsertHeader(0, "Authentication-Results", j.AuthResults); err != nil {
		log.Warn().Err(err).Msg("cannot add Authentication-Results")
	}
	if j.Verdict.Action == policy.Quarantine {
		if err := c.Quarantine("DMARC policy of " + j.Verdict.FromDomain() + " says quarantine"); err != nil {
			log.Warn().Err(err).Msg("cannot quarantine")
		}
	}
}

func (s *session) logSummary(j *policy.Judged, removed int) {
	v := &j.Verdict
	e := s.set.Log.Info()
	if v.Action == policy.TempFail {
		e = s.set.Log.Warn()
	}
	dk := zerolog.Arr()
	for _, d := range j.DKIM {
		dk.Str(d.Domain + ":" + string(d.Status))
	}
	e = e.Str("queue_id", j.QueueID).
		Str("client_ip", j.ClientAddr()).
		Str("helo", j.Helo).
		Str("mail_from", j.MailFrom).
		Str("from_domain", v.FromDomain()).
		Str("spf", string(j.SPF.Status)).
		Str("spf_helo", string(j.HeloSPF.Status)).
		Array("dkim", dk).
		Str("dmarc", string(v.DMARC.Status)).
		Str("policy", string(v.DMARC.Policy)).
		Str("requested", string(v.Requested())).
		Str("enforced", string(v.Enforced)).
		Str("action", v.Action.String()).
		Str("rule", string(v.Rule)).
		Int("removed_forged_ar", removed).
		Float64("elapsed_ms", float64(s.set.Now().Sub(j.Arrival).Microseconds())/1000)
	if v.Exempt != "" {
		e = e.Str("exempt", string(v.Exempt))
	}
	if len(v.Overrides) > 0 {
		e = e.Str("policy_override", v.OverrideTypes()).Str("override_comment", v.OverrideComments())
	}
	if v.Evidence != "" {
		e = e.Str("evidence", v.Evidence)
	}
	if j.ARC.Status != "" {
		e = e.Str("arc", string(j.ARC.Status))
	}
	if v.FromErr != nil {
		e = e.Str("from_error", v.FromErr.Error())
	}
	if v.DMARC.Err != nil {
		e = e.Str("dmarc_error", v.DMARC.Err.Error())
	}
	e.Msg("verdict")
	for _, err := range v.DMARC.Ignored {
		s.set.Log.Debug().Str("queue_id", j.QueueID).Err(err).Msg("dmarc: lookup failure ignored: its answer could not change the verdict")
	}
}

func (s *session) Abort(c *milter.Conn) { s.reset() }

func (s *session) Close(c *milter.Conn) { s.reset() }

// reset drops the current message, stopping its background work.
func (s *session) reset() {
	if s.msg != nil {
		s.msg.Abort()
		s.msg = nil
	}
}
