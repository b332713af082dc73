package defaults

import (
	"testing"
	"time"
)

func TestPositive(t *testing.T) {
	tests := []struct {
		name string
		v, d time.Duration
		want time.Duration
	}{
		{name: "unset", v: 0, d: time.Second, want: time.Second},
		{name: "negative", v: -1, d: time.Second, want: time.Second},
		{name: "set", v: time.Millisecond, d: time.Second, want: time.Millisecond},
	}
	for _, tc := range tests {
		if got := Positive(tc.v, tc.d); got != tc.want {
			t.Errorf("%s: Positive(%v, %v) = %v, want %v", tc.name, tc.v, tc.d, got, tc.want)
		}
	}
}
