package report

import (
	"context"
	"fmt"
	"strings"

	"github.com/dmarc-milter/dmarc-milter/policy"
	"github.com/dmarc-milter/dmarc-milter/policy/dmarc"
	"github.com/dmarc-milter/dmarc-milter/policy/spf"
	"github.com/dmarc-milter/dmarc-milter/report/outbox"
)

// spool hands one report for one recipient to the outbox.
func (r *Reporter) spool(f *policy.Judged, to string, msg []byte) bool {
	env, err := r.out.Put(outbox.Item{Kind: Kind, To: to, Domain: f.Verdict.FromDomain(), QueueID: f.QueueID, Message: msg})
	if err != nil {
		r.log.Error().Err(err).Str("queue_id", f.QueueID).Str("to", to).
			Msg("cannot write failure report to the spool; report dropped")
		return false
	}
	r.log.Info().Str("queue_id", f.QueueID).Str("domain", env.Domain).Str("to", to).Str("id", env.ID).
		Msg("failure report spooled")
	return true
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
