package policy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/dmarc-milter/dmarc-milter/policy/dkim"
	"github.com/dmarc-milter/dmarc-milter/policy/dmarc"
	"github.com/dmarc-milter/dmarc-milter/policy/spf"
)

// RejectPolicy says when a DMARC failure under p=reject is rejected.
//
// RFC 9989 Section 7.4 (and Section 8): Mail Receivers MUST NOT reject
// incoming messages solely on the basis of a p=reject policy; in the
// absence of other knowledge they treat the failure as p=quarantine.
type RejectPolicy string

const (
	// RejectOnEvidence, the default, rejects only on evidence of a spoof
	// (see Verdict.Evidence): no signature aligned with the Author Domain
	// verifies, not even over the header alone, and no sign of an
	// indirect flow (a mailing list, a forwarder, a known sending
	// network) is present. Otherwise the failure is quarantined.
	RejectOnEvidence RejectPolicy = "evidence"
	// RejectAlways rejects every p=reject failure, as RFC 7489 did: the
	// operator's explicit choice, not conformant to RFC 9989.
	RejectAlways RejectPolicy = "always"
	// RejectNever quarantines at most.
	RejectNever RejectPolicy = "never"
)

// OverrideType is why the action is milder than the policy requests: RFC
// 9990's PolicyOverrideType, exactly its values.
type OverrideType string

const (
	OverrideLocalPolicy      OverrideType = "local_policy"
	OverrideMailingList      OverrideType = "mailing_list"
	OverrideOther            OverrideType = "other"
	OverrideTestMode         OverrideType = "policy_test_mode"
	OverrideTrustedForwarder OverrideType = "trusted_forwarder"
)

// Override is one reason a DMARC failure was treated more mildly than
// requested (RFC 9990 PolicyOverrideReason): the aggregate row's reason,
// the log line's policy_override, our Authentication-Results comment.
type Override struct {
	Type    OverrideType `json:"type"`
	Comment string       `json:"comment"`
}

// OverrideTypes returns the types of v's overrides, joined by ",".
func (v *Verdict) OverrideTypes() string {
	var b strings.Builder
	for i, o := range v.Overrides {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(string(o.Type))
	}
	return b.String()
}

// OverrideComments returns the comments of v's overrides, joined by " | "
// (no ";", which Authentication-Results parsers split at even in a
// comment).
func (v *Verdict) OverrideComments() string {
	var b strings.Builder
	for i, o := range v.Overrides {
		if i > 0 {
			b.WriteString(" | ")
		}
		b.WriteString(o.Comment)
	}
	return b.String()
}

// Forwarders are the forwarders whose DMARC failures are delivered
// (trusted_forwarders): client networks, and domains that match the
// SPF-passing MAIL FROM domain or the forward-confirmed reverse name of
// the client (the domain or a subdomain), never the HELO name.
type Forwarders struct {
	Networks []netip.Prefix
	Domains  []string
}

// KnownSenders tells whether mail of an Organizational Domain passed DMARC
// from a client's network before (package policy/senders).
type KnownSenders interface {
	Known(orgDomain string, ip net.IP) bool
}

// maxPTRNames bounds the reverse names of a client checked against
// trusted forwarder domains.
const maxPTRNames = 5

// enforce decides what a DMARC failure that was not exempted gets, and
// why: v.Enforced, v.Overrides, v.Evidence and v.Rule. It is the one home
// of RFC 9989 Sections 7.4 and 8: every sign here can only make the
// treatment milder than requested, and only trusted forwarders (by
// network, SPF or forward-confirmed name) and trusted ARC sealers deliver
// a failure.
func (e *Evaluator) enforce(ctx context.Context, cfg *Config, m *Message, v *Verdict) {
	requested := v.Requested()
	v.Enforced = requested
	if requested == dmarc.PolicyNone {
		return
	}
	if why := e.trustedForwarder(ctx, cfg, m); why != "" {
		v.lower(cfg.trustedForwarderPolicy(), Override{OverrideTrustedForwarder, why})
		return
	}
	if sealer := cfg.trustedARC(m, v.FromDomain()); sealer != "" {
		v.lower(cfg.trustedForwarderPolicy(), Override{OverrideTrustedForwarder, "arc=pass, sealed by " + sealer})
		return
	}
	if requested != dmarc.PolicyReject {
		return
	}
	v.Evidence = spoofEvidence(m, v)
	switch cfg.RejectPolicy {
	case RejectAlways:
		return
	case RejectNever:
		v.lower(dmarc.PolicyQuarantine, Override{OverrideLocalPolicy, "reject_policy never: reject applied as quarantine"})
		return
	}
	signs := e.indirectSigns(ctx, m, v)
	if len(signs) == 0 {
		return
	}
	v.lower(dmarc.PolicyQuarantine, signs...)
}

// lower sets the enforced policy to p, for the reasons given.
func (v *Verdict) lower(p dmarc.Policy, why ...Override) {
	v.Enforced = p
	v.Rule = RuleOverride
	v.Overrides = append(v.Overrides, why...)
}

func (cfg *Config) trustedForwarderPolicy() dmarc.Policy {
	if cfg.TrustedForwarderQuarantine {
		return dmarc.PolicyQuarantine
	}
	return dmarc.PolicyNone
}

// trustedForwarder names the trusted_forwarders entry the message came
// through, "" if none: the client's network, the MAIL FROM domain when
// SPF passed for it, or a reverse name of the client that resolves back
// to its address (forward-confirmed). The HELO name alone never counts:
// it costs nothing to claim.
func (e *Evaluator) trustedForwarder(ctx context.Context, cfg *Config, m *Message) string {
	f := &cfg.TrustedForwarders
	if InNetworks(m.ClientIP, f.Networks) {
		return "trusted forwarder " + m.ClientAddr()
	}
	if len(f.Domains) == 0 || m.ClientIP == nil {
		return ""
	}
	if m.SPF.Status == spf.Pass && m.SPF.Identity == spf.IdentityMailFrom && dmarc.InDomainList(m.SPF.Domain, f.Domains) {
		return "trusted forwarder " + strings.ToLower(m.SPF.Domain) + ", SPF pass"
	}
	names, err := e.res.LookupAddr(ctx, m.ClientAddr())
	if err != nil {
		return ""
	}
	for _, name := range names[:min(len(names), maxPTRNames)] {
		name = strings.TrimSuffix(strings.ToLower(name), ".")
		if !dmarc.InDomainList(name, f.Domains) {
			continue
		}
		addrs, err := e.res.LookupIPAddr(ctx, name)
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if a.IP.Equal(m.ClientIP) {
				return "trusted forwarder " + name + ", forward-confirmed reverse name"
			}
		}
	}
	return ""
}

// trustedARC returns the sealer of a validated ARC chain whose newest set
// is sealed by one of TrustedARCSealers and whose
// ARC-Authentication-Results say dmarc=pass for the From domain; "" if
// none. ARC (RFC 8617, moving to Historic) is used only as this trust
// list, never as a verdict by itself.
func (cfg *Config) trustedARC(m *Message, fromDomain string) string {
	a := &m.ARC
	if len(cfg.TrustedARCSealers) == 0 || a.Status != dkim.ARCPass {
		return ""
	}
	// The newest ARC-Message-Signature must sign From: a set that does
	// not could be replayed onto any message.
	if !a.SignsFrom || !dmarc.InDomainList(a.Sealer, cfg.TrustedARCSealers) || !a.DMARCPass(fromDomain) {
		return ""
	}
	return strings.ToLower(a.Sealer)
}

// indirectSigns lists the signs of an indirect flow that lower a reject to
// quarantine (RFC 9989 Section 7.4's "other knowledge"). None of them
// delivers a message: each is something a spoofer might imitate, and
// quarantine bounds what that gains.
func (e *Evaluator) indirectSigns(ctx context.Context, m *Message, v *Verdict) []Override {
	var signs []Override
	// A signature of the Author Domain whose header signature verifies
	// while the body hash fails: the domain signed this header, only the
	// body changed (a list footer, a forwarder's line).
	if d := e.headerSignedBy(ctx, m, v); d != "" {
		signs = append(signs, Override{OverrideOther, "the signature of " + d + " verifies over the header, only the body changed in transit"})
	}
	// RFC 2919 List-Id, RFC 2369 List-Post.
	if f := m.field("List-Id", "List-Post"); f != "" {
		signs = append(signs, Override{OverrideMailingList, "mailing list, " + f})
	}
	// Sender Rewriting Scheme: the forwarder's own envelope, authorized by
	// its SPF.
	if srs, domain := isSRS(m); srs {
		signs = append(signs, Override{OverrideOther, "SRS forwarder " + domain + ", SPF pass"})
	}
	if e.known != nil && m.ClientIP != nil {
		if org := e.orgDomain(ctx, v); org != "" && e.known.Known(org, m.ClientIP) {
			signs = append(signs, Override{OverrideLocalPolicy, "this network sent DMARC-passing mail for " + org + " before"})
		}
	}
	return signs
}

// headerSignedBy returns the d= of a signature aligned with the Author
// Domain whose header signature verifies although the signature failed,
// "" if none.
func (e *Evaluator) headerSignedBy(ctx context.Context, m *Message, v *Verdict) string {
	for _, d := range m.DKIM {
		if d.HeaderSigned && d.Status != dkim.Pass && e.alignedDKIM(ctx, d.Domain, v) {
			return strings.ToLower(d.Domain)
		}
	}
	return ""
}

// alignedDKIM reports whether a signing domain is aligned with the
// verdict's Author Domain under its record's adkim (RFC 9989 Section
// 4.4.1).
func (e *Evaluator) alignedDKIM(ctx context.Context, domain string, v *Verdict) bool {
	mode := dmarc.AlignRelaxed
	if v.DMARC.Record != nil {
		mode = v.DMARC.Record.ADKIM
	}
	d, err := dmarc.NormalizeDomain(domain)
	if err != nil {
		return false
	}
	return dmarc.Aligned(d, v.FromDomain(), mode, func(name string) string {
		if name == v.FromDomain() && v.DMARC.OrgDomain != "" {
			return v.DMARC.OrgDomain
		}
		org, _ := dmarc.OrganizationalDomain(ctx, e.res, name)
		return org
	})
}

// orgDomain is the Author Domain's Organizational Domain, "" if DNS
// cannot tell.
func (e *Evaluator) orgDomain(ctx context.Context, v *Verdict) string {
	if v.DMARC.OrgDomain != "" {
		return v.DMARC.OrgDomain
	}
	org, err := dmarc.OrganizationalDomain(ctx, e.res, v.FromDomain())
	if err != nil {
		return ""
	}
	return org
}

// field returns the name of the first header field the message has among
// names, "" if none.
func (m *Message) field(names ...string) string {
	for _, f := range m.Header {
		for _, n := range names {
			if strings.EqualFold(strings.TrimSpace(f.Name), n) {
				return n
			}
		}
	}
	return ""
}

// isSRS reports whether the MAIL FROM is a Sender Rewriting Scheme
// address (local part SRS0= or SRS1=) that SPF authorized for its own
// domain, and names the domain.
func isSRS(m *Message) (bool, string) {
	at := strings.LastIndexByte(m.MailFrom, '@')
	if at < 5 || m.SPF.Status != spf.Pass || m.SPF.Identity != spf.IdentityMailFrom {
		return false, ""
	}
	local := strings.ToUpper(m.MailFrom[:5])
	if local != "SRS0=" && local != "SRS1=" {
		return false, ""
	}
	return true, strings.ToLower(m.MailFrom[at+1:])
}

// spoofEvidence says, for a postmaster, why the message is taken for a
// spoof of its Author Domain: what DKIM and SPF showed. It is the text of
// the reject reply.
func spoofEvidence(m *Message, v *Verdict) string {
	domain := v.FromDomain()
	dkimText := "no signature of " + domain
	for _, d := range m.DKIM {
		if strings.EqualFold(d.Domain, domain) || strings.HasSuffix(strings.ToLower(d.Domain), "."+domain) {
			dkimText = "the signature of " + strings.ToLower(d.Domain) + " does not verify"
			if d.Err != nil && !errors.Is(d.Err, dkim.ErrSignature) {
				dkimText = "the signature of " + strings.ToLower(d.Domain) + " fails: " + reasonText(d.Err)
			}
			break
		}
	}
	return dkimText + "; " + spfEvidence(m, v)
}

func spfEvidence(m *Message, v *Verdict) string {
	r := &m.SPF
	ip := m.ClientAddr()
	spfDomain := strings.ToLower(r.Domain)
	switch {
	case spfDomain == "":
		return "no SPF identity"
	case v.DMARC.SPFAligned:
		return "SPF passed"
	case spfDomain != v.FromDomain() && !strings.HasSuffix(spfDomain, "."+v.FromDomain()) && !strings.HasSuffix(v.FromDomain(), "."+spfDomain):
		return fmt.Sprintf("SPF %s for %s, not %s", r.Status, spfDomain, v.FromDomain())
	}
	switch r.Status {
	case spf.Fail, spf.SoftFail:
		return "SPF does not authorize " + ip
	case spf.None:
		return spfDomain + " publishes no SPF record"
	case spf.Pass:
		return "SPF passed for " + spfDomain + ", not aligned with " + v.FromDomain()
	}
	return fmt.Sprintf("SPF %s for %s", r.Status, ip)
}
