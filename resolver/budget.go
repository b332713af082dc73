package resolver

import (
	"context"
	"time"
)

// budgetKey is the context key of a lookup's DNS deadline.
type budgetKey struct{}

// WithBudget returns ctx with a deadline for its lookups that the Resolver
// applies only when a lookup has to wait for an upstream answer: the
// context and timer that bound the wait are made then. A cache hit, the
// common case, makes neither, where context.WithDeadline would make both
// for every stage of every message. The earlier of this deadline and
// ctx's own bounds the wait.
func WithBudget(ctx context.Context, deadline time.Time) context.Context {
	return context.WithValue(ctx, budgetKey{}, deadline)
}

// budget returns ctx bounded by its WithBudget deadline, if it has one,
// and the function that releases it.
func budget(ctx context.Context) (context.Context, context.CancelFunc) {
	if d, ok := ctx.Value(budgetKey{}).(time.Time); ok {
		return context.WithDeadline(ctx, d)
	}
	return ctx, func() {}
}
