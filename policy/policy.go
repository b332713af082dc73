// Package policy decides what happens to one message: it checks SPF
// (RFC 7208) for the MAIL FROM and HELO identities, takes the DKIM results
// (RFC 6376, RFC 8463, RFC 8301) computed while the message streamed,
// evaluates DMARC (RFC 9989) for the RFC5322.From domain, and turns the result
// and the local configuration into an action. It also writes the
// Authentication-Results header field (RFC 8601).
//
// A message has one type from the session to the reports: the session
// collects a Message, Evaluator.Judge judges it into a Verdict, and the Judged
// message (Message, Verdict, Authentication-Results) goes to the consumers
// of verdicts. The sub-packages do one thing each: spf, dkim and dmarc;
// DNS comes through a Resolver (package resolver).
//
// The words, one meaning each, from the domain's record to the MTA:
//   - policy (dmarc.Policy): what a DMARC record publishes in p, sp or np;
//     dmarc.Result.Policy is the one that applies to the message, Applied
//     the same after the t=y downgrade;
//   - requested (dmarc.Result.Requested, Verdict.Requested): what DMARC asks
//     for this message, the applied policy when it failed and none
//     otherwise;
//   - enforced (Verdict.Enforced): what this receiver applied to a
//     failure, the request or milder by local policy; an override
//     (Override, an RFC 9990 reason) says why it is milder (evidence.go,
//     RFC 9989 Sections 7.4 and 8);
//   - action (Action): what the MTA is told, Verdict.Rule the rule that
//     chose it (DMARC, a DNS failure, a bad From, forged
//     Authentication-Results, an exemption, an override), Verdict.Reply the
//     SMTP reply;
//   - judge (Evaluator.Judge): turn a Message into its Verdict;
//   - disposition: only in RFC 9990's sense, the policy a receiver applied,
//     in aggregate report rows (package report/aggregate).
package policy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/dmarc-milter/dmarc-milter/policy/dkim"
	"github.com/dmarc-milter/dmarc-milter/policy/dmarc"
	"github.com/dmarc-milter/dmarc-milter/policy/spf"
)

// Action is what the MTA is told to do with a message.
type Action int

const (
	Accept     Action = iota // deliver (possibly with a quarantine mark only)
	Quarantine               // deliver to the MTA's quarantine (Postfix: hold queue)
	Reject                   // 550 5.7.1
	TempFail                 // 451 4.7.5: DNS left the outcome unknown
)

func (a Action) String() string {
	switch a {
	case Accept:
		return "accept"
	case Quarantine:
		return "quarantine"
	case Reject:
		return "reject"
	case TempFail:
		return "tempfail"
	}
	return "unknown"
}

// QuarantineMode says how a DMARC quarantine disposition is carried out.
type QuarantineMode string

const (
	QuarantineHold QuarantineMode = "hold" // the milter quarantine action
	QuarantineMark QuarantineMode = "mark" // only the Authentication-Results header tells
)

// Config is the local policy.
type Config struct {
	// AuthservID is the authserv-id of our Authentication-Results fields.
	AuthservID string
	// Monitor evaluates, stamps and logs without enforcing.
	Monitor bool
	// Quarantine is how p=quarantine is applied.
	Quarantine QuarantineMode
	// TempErrorAccept accepts mail whose DMARC outcome a DNS temporary error
	// left unknown, instead of answering 451 4.7.5.
	TempErrorAccept bool
	// RejectBadFrom rejects messages without exactly one From header field,
	// with a From field that does not parse, or with more than
	// MaxAuthorDomains domains in it (DMARC cannot be evaluated for them;
	// RFC 9989 section 11.5 lets a receiver reject them).
	RejectBadFrom bool
	// RejectMultiAuthor rejects messages whose From field holds more than
	// one address, before DMARC (RFC 9989 section 11.5). Off, each Author
	// Domain is evaluated and the strictest result applies.
	RejectMultiAuthor bool
	// RejectText is the text of the 550 5.7.1 reply; "{domain}" stands for
	// the RFC5322.From domain, "{evidence}" for Verdict.Evidence.
	RejectText string
	// TrustedNetworks are client networks whose mail is evaluated and
	// stamped but never enforced (default 127.0.0.0/8 and ::1).
	TrustedNetworks []netip.Prefix
	// ExemptDomains are RFC5322.From domains (and their subdomains) whose
	// mail is evaluated and stamped but never enforced.
	ExemptDomains []string
	// RejectPolicy says when a p=reject failure is rejected; "" is
	// RejectOnEvidence (RFC 9989 Sections 7.4 and 8).
	RejectPolicy RejectPolicy
	// TrustedForwarders are forwarders whose DMARC failures are delivered
	// (reason trusted_forwarder); with TrustedForwarderQuarantine they
	// are quarantined instead.
	TrustedForwarders          Forwarders
	TrustedForwarderQuarantine bool
	// TrustedARCSealers are the domains whose ARC seal (RFC 8617),
	// validated by us, is trusted when its ARC-Authentication-Results
	// say dmarc=pass for the From domain: the failure is then treated as
	// through a trusted forwarder.
	TrustedARCSealers []string
}

// DefaultRejectText is the default text of a DMARC reject.
// "{evidence}" stands for Verdict.Evidence, so that the sender's
// postmaster can see why.
const DefaultRejectText = "Message rejected: DMARC policy of {domain} says reject: {evidence}"

// Resolver is what the checks need from DNS: the project's caching resolver
// (resolver) satisfies it.
type Resolver interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
	LookupMX(ctx context.Context, name string) ([]*net.MX, error)
	LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error)
	LookupAddr(ctx context.Context, addr string) ([]string, error)
	// Exists reports whether a name exists: false only for NXDOMAIN.
	Exists(ctx context.Context, name string) (bool, error)
}

// Evaluator applies Config to messages. It is safe for concurrent use.
type Evaluator struct {
	cfg     atomic.Pointer[Config]
	res     Resolver
	exists  func(ctx context.Context, domain string) (bool, error) // res.Exists, made once
	spf     *spf.Checker
	known   KnownSenders
	records *dmarc.RecordCache
}

// recordCacheSize is how many parsed DMARC records an Evaluator keeps.
const recordCacheSize = 10000

// New returns an Evaluator using r for every DNS query.
func New(cfg Config, r Resolver) *Evaluator {
	e := &Evaluator{res: r, exists: r.Exists, spf: spf.NewChecker(r), records: dmarc.NewRecordCache(recordCacheSize)}
	e.SetConfig(cfg)
	return e
}

// UseKnownSenders makes a failure from a network that sent DMARC-passing
// mail for the same Organizational Domain before a sign of an indirect
// flow (reason local_policy). Call it before the first message.
func (e *Evaluator) UseKnownSenders(k KnownSenders) { e.known = k }

// SetConfig replaces the configuration (SIGHUP reload); messages being
// decided keep the configuration they started with.
func (e *Evaluator) SetConfig(cfg Config) {
	if cfg.RejectText == "" {
		cfg.RejectText = DefaultRejectText
	}
	if cfg.Quarantine == "" {
		cfg.Quarantine = QuarantineHold
	}
	if cfg.RejectPolicy == "" {
		cfg.RejectPolicy = RejectOnEvidence
	}
	e.cfg.Store(&cfg)
}

// AuthservID is the authserv-id of the configuration in force.
func (e *Evaluator) AuthservID() string { return e.cfg.Load().AuthservID }

// Config returns the evaluator's configuration.
func (e *Evaluator) Config() Config { return *e.cfg.Load() }

// SPF evaluates the MAIL FROM identity (for the null sender, the HELO
// identity, RFC 7208 section 2.4) and the HELO identity, each on its own.
// The two do not depend on each other (section 2.3): with a resolver that
// can prefetch, the HELO domain's record is asked for before the MAIL FROM
// check starts, so that a name server that does not answer costs the two
// first lookups one timeout, not one each. Without a HELO check to make,
// or with the same domain, nothing more is asked.
func (e *Evaluator) SPF(ctx context.Context, ip net.IP, helo, mailFrom string) (mail, heloResult spf.Result) {
	if p, ok := e.res.(interface{ PrefetchTXT(name string) }); ok {
		if d, ok := spf.HeloDomain(helo); ok && !strings.EqualFold(d, spf.MailFromDomain(mailFrom)) {
			p.PrefetchTXT(d + ".")
		}
	}
	mail = e.spf.CheckMailFrom(ctx, ip, helo, mailFrom)
	heloResult = e.spf.CheckHelo(ctx, ip, helo)
	return mail, heloResult
}

// Exemption is a local policy under which a message is evaluated and
// stamped but not enforced.
type Exemption string

const (
	ExemptMonitor        Exemption = "monitor"         // monitor mode
	ExemptAuthenticated  Exemption = "authenticated"   // SASL-authenticated client
	ExemptTrustedNetwork Exemption = "trusted-network" // client in trusted_networks
	ExemptLocalClient    Exemption = "local-client"    // no client IP address (unix socket, unknown family)
	ExemptDomain         Exemption = "exempt-domain"   // From domain in exempt_domains
)

// Local reports whether the exemption is for mail from this site's own
// users or hosts (which get no failure reports).
func (e Exemption) Local() bool {
	return e == ExemptAuthenticated || e == ExemptTrustedNetwork || e == ExemptLocalClient
}

// Verdict is the decision on one message, whole and once: what DMARC
// found for the From domain and the action the MTA is told, including the
// rejects that are not DMARC's (a bad From, forged Authentication-Results
// fields). The SPF and DKIM results it was reached from are the Message's.
type Verdict struct {
	// FromErr: the From header could not be evaluated.
	FromErr error
	// DMARC is the DMARC result; DMARC.FromDomain is the Author Domain
	// whose result applies (the strictest of several).
	DMARC dmarc.Result
	// Exempt names the local policy that stopped enforcement ("" if none).
	Exempt Exemption
	// Enforced is the policy this receiver applied to a DMARC failure:
	// what DMARC requested, or milder by local policy (an exemption, an
	// override); none when nothing was requested or the outcome is
	// unknown.
	Enforced dmarc.Policy
	// Overrides say why a failure was treated more mildly than its
	// record asks (t=y included): RFC 9990 reasons.
	Overrides []Override
	// Evidence is, for a p=reject failure, what DKIM and SPF showed of a
	// spoof, for the reject reply ("no signature of example.com; SPF does
	// not authorize 192.0.2.1").
	Evidence string
	// Action is what the MTA is told, Rule the rule that chose it.
	Action Action
	Rule   Rule
	// Reply is the SMTP reply for Reject and TempFail.
	Reply Reply
}

// Reply is an SMTP reply.
type Reply struct {
	Code     int
	Enhanced string
	Text     string
}

// Rule names the rule that chose a verdict's action.
type Rule string

// Rules.
const (
	RuleDMARC     Rule = "dmarc"     // DMARC's requested policy (or none)
	RuleDNS       Rule = "dns"       // a DNS failure left the outcome unknown
	RuleBadFrom   Rule = "bad-from"  // reject_bad_from, reject_multi_author
	RuleForgedAR  Rule = "forged-ar" // more forged Authentication-Results than can be removed
	RuleExemption Rule = "exemption" // a local policy (Exempt) stopped enforcement
	RuleOverride  Rule = "override"  // milder than requested: Overrides say why
)

// FromDomain is the Author Domain the verdict is about, "" if the From
// field could not be evaluated.
func (v *Verdict) FromDomain() string { return v.DMARC.FromDomain }

// Unknown reports whether a DNS temporary error left the outcome unknown
// (what DMARC requests could not be told).
func (v *Verdict) Unknown() bool { return v.FromErr == nil && v.DMARC.Requested == "" }

// Requested is what DMARC requests for the message: the applied policy when
// it failed, none otherwise, and none when the outcome is unknown.
func (v *Verdict) Requested() dmarc.Policy {
	if v.DMARC.Requested == "" {
		return dmarc.PolicyNone
	}
	return v.DMARC.Requested
}

// Judge evaluates DMARC for m and decides the action.
func (e *Evaluator) Judge(ctx context.Context, m *Message) Verdict {
	cfg := e.cfg.Load()
	v := e.judge(ctx, cfg, m)
	if m.TooManyForgedAR {
		// Authentication-Results fields claiming to be ours that cannot
		// all be removed must not reach the mailbox, whatever DMARC says.
		v.Action, v.Rule = Reject, RuleForgedAR
		v.Reply = Reply{550, "5.7.1", "Message rejected: too many Authentication-Results header fields"}
	}
	return v
}

func (e *Evaluator) judge(ctx context.Context, cfg *Config, m *Message) Verdict {
	res := e.res
	v := Verdict{Rule: RuleDMARC}
	v.Exempt = cfg.exemption(m)

	author, err := m.Author()
	reject := cfg.RejectBadFrom
	if err == nil && author.Addresses > 1 && cfg.RejectMultiAuthor {
		err, reject = fmt.Errorf("%w (%d)", errMultiAuthor, author.Addresses), true
	}
	if err != nil {
		v.FromErr = err
		v.DMARC = dmarc.Result{Status: dmarc.PermError, Err: err, Requested: dmarc.PolicyNone}
		switch {
		case reject && v.Exempt == "":
			v.Action, v.Rule = Reject, RuleBadFrom
			v.Reply = Reply{550, "5.7.1", "Message rejected: " + fromErrorText(err)}
		case reject:
			v.Rule = RuleExemption
		}
		return v
	}
	if v.Exempt == "" && cfg.exemptDomains(author.Domains) {
		v.Exempt = ExemptDomain
	}

	in := dmarc.Input{
		SPFDomain:    m.SPF.Domain,
		SPFPass:      m.SPF.Status == spf.Pass,
		SPFTempError: m.SPF.Status == spf.TempError,
		Exists:       e.exists,
		Records:      e.records,
	}
	in.DKIM = make([]dmarc.DKIMResult, 0, len(m.DKIM))
	for _, d := range m.DKIM {
		in.DKIM = append(in.DKIM, dmarc.DKIMResult{Domain: d.Domain, Pass: d.Status == dkim.Pass, TempError: d.Status == dkim.TempError})
	}
	// RFC 9989 section 11.5: with several Author Domains, each is
	// evaluated and the strictest result applies.
	for i, domain := range author.Domains {
		in.FromDomain = domain
		r := dmarc.Evaluate(ctx, res, in)
		if i == 0 || stricter(r, v.DMARC) {
			v.DMARC = r
		}
	}
	domain := v.FromDomain()
	if v.Unknown() {
		// A DNS failure whose answer could change what happens to the
		// message (dmarc.Evaluate weighs which failures matter).
		v.Rule = RuleDNS
	}
	if v.DMARC.Status == dmarc.Fail && v.DMARC.Applied != v.DMARC.Policy {
		v.Overrides = append(v.Overrides, Override{OverrideTestMode, "t=y: " + string(v.DMARC.Policy) + " applied as " + string(v.DMARC.Applied)})
	}
	v.Enforced = dmarc.PolicyNone
	if v.Exempt != "" {
		if v.Unknown() || v.Requested() != dmarc.PolicyNone {
			v.Rule = RuleExemption
			v.Overrides = append(v.Overrides, Override{OverrideLocalPolicy, v.Exempt.Text()})
		}
		return v
	}
	if v.Unknown() {
		if !cfg.TempErrorAccept {
			v.Action = TempFail
			v.Reply = Reply{451, "4.7.5", "Temporary DNS failure evaluating DMARC for " + domain + ", try again later"}
		}
		return v
	}
	e.enforce(ctx, cfg, m, &v)
	switch v.Enforced {
	case dmarc.PolicyReject:
		v.Action = Reject
		v.Reply = Reply{550, "5.7.1", strings.NewReplacer("{domain}", domain, "{evidence}", v.Evidence).Replace(cfg.RejectText)}
	case dmarc.PolicyQuarantine:
		if cfg.Quarantine == QuarantineHold {
			v.Action = Quarantine
		}
	}
	return v
}

func (cfg *Config) exemption(m *Message) Exemption {
	switch {
	case cfg.Monitor:
		return ExemptMonitor
	case m.AuthUser != "":
		return ExemptAuthenticated
	}
	if m.LocalClient {
		// Postfix gives no address for a client on a unix socket or of
		// unknown family: it is local, and SPF cannot be evaluated.
		return ExemptLocalClient
	}
	// An address that does not parse is never trusted.
	if InNetworks(m.ClientIP, cfg.TrustedNetworks) {
		return ExemptTrustedNetwork
	}
	return ""
}

// InNetworks reports whether ip is in one of nets; a missing or malformed
// address is in none. IPv4-mapped IPv6 addresses count as IPv4.
func InNetworks(ip net.IP, nets []netip.Prefix) bool {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return false
	}
	a = a.Unmap()
	for _, p := range nets {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// MaxAuthorDomains is the largest number of distinct Author Domains
// evaluated for one message (RFC 9989 section 11.5 warns that evaluating
// many is a denial-of-service vector); a From field with more is a bad
// From (Config.RejectBadFrom).
const MaxAuthorDomains = 5

var (
	errTooManyAuthors = fmt.Errorf("more than %d domains in the From header field", MaxAuthorDomains)
	errMultiAuthor    = errors.New("more than one address in the From header field")
)

// stricter reports whether the DMARC result a asks for more than b: an
// unknown outcome, then reject, quarantine, none; for the same
// disposition, fail before temperror, permerror, none and pass.
func stricter(a, b dmarc.Result) bool {
	return strictness(a) > strictness(b)
}

// strictness orders results: the index in each list, least strict first,
// plus one, so that values outside them count as least strict of all.
func strictness(r dmarc.Result) int {
	requested := []dmarc.Policy{dmarc.PolicyNone, dmarc.PolicyQuarantine, dmarc.PolicyReject, ""}
	status := []dmarc.Status{dmarc.None, dmarc.PermError, dmarc.TempError, dmarc.Fail}
	return (slices.Index(requested, r.Requested)+1)*10 + slices.Index(status, r.Status) + 1
}

// exemptDomains reports whether every Author Domain is in ExemptDomains
// (or below one): a spoof must not ride on an exempt co-author.
func (cfg *Config) exemptDomains(domains []string) bool {
	for _, domain := range domains {
		if !dmarc.InDomainList(domain, cfg.ExemptDomains) {
			return false
		}
	}
	return len(domains) > 0
}

func fromErrorText(err error) string {
	switch {
	case errors.Is(err, dmarc.ErrNoFrom):
		return "no From header field"
	case errors.Is(err, dmarc.ErrMultipleFrom):
		return "more than one From header field"
	case errors.Is(err, errMultiAuthor), errors.Is(err, errTooManyAuthors):
		return errors.Unwrap(err).Error()
	}
	return "unparseable From header field"
}
