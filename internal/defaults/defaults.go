// Package defaults fills the unset fields of a configuration: one rule for
// every count, size and duration setting whose zero value means "the
// default". Fields where only the zero value is unset use cmp.Or.
package defaults

// Positive returns v, or d when v is zero or negative.
func Positive[T ~int | ~int64](v, d T) T {
	if v <= 0 {
		return d
	}
	return v
}
