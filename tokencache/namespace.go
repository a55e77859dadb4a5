package tokencache

import "fmt"

// Namespace returns the namespace that names the cache's shared token
// (WithNamespace; DefaultNamespace when not given). Metrics label by it.
func (c *Cache) Namespace() string { return c.cfg.namespace }

// maxNameLen is the longest namespace or user id accepted, in bytes.
const maxNameLen = 128

// ValidateNamespace reports whether ns can name a shared token: 1 to 128
// printable ASCII bytes without braces, colons, slashes, quotes or
// whitespace, so that it cannot break out of its key or hash tag
// ("tokencache:{<ns>}:server", "tokencache:{<ns>/<user>}:client") nor be
// mistaken for another namespace's user. WithNamespace and the command's
// --namespace apply it. The error wraps ErrInvalidNamespace and says why,
// with the byte offset of the first offending character.
func ValidateNamespace(ns string) error {
	why := nameProblem(ns)
	switch {
	case why == "":
		return nil
	case len(ns) > maxNameLen:
		return fmt.Errorf("%w: %s (%d)", ErrInvalidNamespace, why, len(ns))
	default:
		return fmt.Errorf("%w %q: %s", ErrInvalidNamespace, ns, why)
	}
}

// nameProblem says what makes s unfit to name a namespace or a user
// inside a Redis key and hash tag, or "" if nothing does.
func nameProblem(s string) string {
	if s == "" {
		return "empty"
	}
	if len(s) > maxNameLen {
		return fmt.Sprintf("longer than %d bytes", maxNameLen)
	}
	for i := 0; i < len(s); i++ {
		var why string
		switch c := s[i]; {
		case c == '{' || c == '}':
			why = "holds a brace"
		case c == ':':
			why = "holds a colon"
		case c == '/' || c == '\\':
			why = "holds a slash"
		case c == '"' || c == '\'':
			why = "holds a quote"
		case c == ' ' || '\t' <= c && c <= '\r':
			why = "holds whitespace"
		case c < 0x20 || c == 0x7f:
			why = "holds a control character"
		case c >= 0x80:
			why = "holds a non-ASCII byte"
		default:
			continue
		}
		return fmt.Sprintf("%s at byte %d", why, i)
	}
	return ""
}
