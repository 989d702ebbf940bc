package config

import (
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
	"github.com/spf13/viper"
)

// loader reads raw values out of viper with strict typing. viper's GetInt
// and friends turn "abc" into 0 silently; reading the raw value lets a wrong
// type be reported against its key instead.
type loader struct {
	v *viper.Viper
	// client accepts the host's own certificate outside its validity
	// period (see LoadClient).
	client bool
}

// fail is fail() plus a note when the value came from the environment, since
// the operator will otherwise search the file for a value that is not there.
func (l *loader) fail(key, problem, fix string) *Error {
	if val, ok := os.LookupEnv(envName(key)); ok && val != "" {
		problem += " (from " + envName(key) + ")"
	}
	return fail(key, problem, fix)
}

func (l *loader) str(key string) (string, *Error) {
	switch x := l.v.Get(key).(type) {
	case nil:
		return "", nil
	case string:
		return strings.TrimSpace(x), nil
	default:
		return "", l.fail(key, "must be a string, not "+describe(x),
			fmt.Sprintf("quote the value, e.g. %s = %q", leaf(key), fmt.Sprint(x)))
	}
}

// integer returns int64 so range checks happen before any narrowing, and
// accepts decimal strings because environment variables are always strings.
func (l *loader) integer(key string) (int64, *Error) {
	val := l.v.Get(key)
	fix := fmt.Sprintf("write a whole number without quotes, e.g. %s = %v", leaf(key), defaultFor(key))
	switch x := val.(type) {
	case int:
		return int64(x), nil
	case int8:
		return int64(x), nil
	case int16:
		return int64(x), nil
	case int32:
		return int64(x), nil
	case int64:
		return x, nil
	case uint:
		return l.fromUint(key, uint64(x), fix)
	case uint8:
		return int64(x), nil
	case uint16:
		return int64(x), nil
	case uint32:
		return int64(x), nil
	case uint64:
		return l.fromUint(key, x, fix)
	case string:
		n, err := strconv.ParseInt(strings.TrimSpace(x), 10, 64)
		if err != nil {
			return 0, l.fail(key, fmt.Sprintf("%q is not a whole number", x), fix)
		}
		return n, nil
	default:
		return 0, l.fail(key, "must be a whole number, not "+describe(x), fix)
	}
}

func (l *loader) fromUint(key string, x uint64, fix string) (int64, *Error) {
	if x > math.MaxInt64 {
		return 0, l.fail(key, fmt.Sprintf("%d is out of range", x), fix)
	}
	return int64(x), nil
}

// list accepts a TOML array of strings, or one comma-separated string (the
// only way to express a list in an environment variable).
func (l *loader) list(key string) ([]string, *Error) {
	var raw []any
	switch x := l.v.Get(key).(type) {
	case nil:
		return nil, nil
	case string:
		return splitList(x), nil
	case []string:
		return splitList(strings.Join(x, ",")), nil
	case []any:
		raw = x
	default:
		return nil, l.fail(key, "must be an array of strings, not "+describe(x),
			fmt.Sprintf(`write it as %s = ["a", "b"]`, leaf(key)))
	}
	out := make([]string, 0, len(raw))
	for i, item := range raw {
		s, ok := item.(string)
		if !ok {
			return nil, fail(fmt.Sprintf("%s[%d]", key, i), "must be a string, not "+describe(item),
				"quote each entry")
		}
		out = append(out, strings.TrimSpace(s))
	}
	return out, nil
}

func splitList(s string) []string {
	var out []string
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}

// describe names a value's TOML type for "must be X, not Y" messages.
func describe(v any) string {
	switch x := v.(type) {
	case string:
		return fmt.Sprintf("the string %q", x)
	case bool:
		return fmt.Sprintf("the boolean %v", x)
	case float32, float64:
		return fmt.Sprintf("the float %v", x)
	case int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64:
		return fmt.Sprintf("the integer %v", x)
	case []any, []string, []map[string]any:
		return "an array"
	case map[string]any:
		return "a table"
	case time.Time, toml.LocalDate, toml.LocalTime, toml.LocalDateTime:
		return "a date/time"
	default:
		return fmt.Sprintf("a %T", x)
	}
}

func leaf(key string) string {
	_, l := splitKey(key)
	return l
}

func defaultFor(key string) any {
	for _, d := range defaults {
		if d.key == key {
			return d.val
		}
	}
	return ""
}
