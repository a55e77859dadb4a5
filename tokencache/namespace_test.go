package tokencache

import (
	"errors"
	"strings"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// TestValidateNamespaceIsTheOneRule checks that ValidateNamespace refuses
// what the documentation says (colons and slashes included) with one
// error prefix, and that New applies the same rule through WithNamespace.
func TestValidateNamespaceIsTheOneRule(t *testing.T) {
	tests := []struct {
		ns   string
		want string // in the error; "" for a valid namespace
	}{
		{"default", ""},
		{"billing-eu_2", ""},
		{"", "empty"},
		{"bad:ns", "holds a colon at byte 3"},
		{"bad/ns", "holds a slash at byte 3"},
		{`bad\ns`, "holds a slash at byte 3"},
		{"a{b}", "holds a brace at byte 1"},
		{"a b", "holds whitespace at byte 1"},
		{`a"b`, "holds a quote at byte 1"},
		{"a\x00b", "holds a control character at byte 1"},
		{"é", "holds a non-ASCII byte at byte 0"},
		{strings.Repeat("n", 128), ""},
		{strings.Repeat("n", 200), "longer than 128 bytes"},
	}
	rdb := redis.NewClient(&redis.Options{Addr: miniredis.RunT(t).Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	for _, tt := range tests {
		err := ValidateNamespace(tt.ns)
		c, newErr := New(rdb, FetcherFunc(nil), WithNamespace(tt.ns))
		if c != nil {
			_ = c.Close()
		}
		if tt.want == "" {
			if err != nil {
				t.Errorf("ValidateNamespace(%.20q) = %v, want nil", tt.ns, err)
			}
			if newErr != nil && errors.Is(newErr, ErrInvalidNamespace) {
				t.Errorf("New(WithNamespace(%.20q)) = %v", tt.ns, newErr)
			}
			continue
		}
		if !errors.Is(err, ErrInvalidNamespace) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ValidateNamespace(%.20q) = %v, want ErrInvalidNamespace saying %q", tt.ns, err, tt.want)
			continue
		}
		if n := strings.Count(err.Error(), "tokencache:"); n != 1 {
			t.Errorf("ValidateNamespace(%.20q) = %q: %d prefixes, want one", tt.ns, err, n)
		}
		if len(err.Error()) > 100 {
			t.Errorf("ValidateNamespace(%.20q): a %d-byte message", tt.ns, len(err.Error()))
		}
		if !errors.Is(newErr, ErrInvalidNamespace) || newErr.Error() != err.Error() {
			t.Errorf("New(WithNamespace(%.20q)) = %v, want ValidateNamespace's %v", tt.ns, newErr, err)
		}
	}
}
