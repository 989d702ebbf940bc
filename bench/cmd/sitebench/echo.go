package main

import (
	"slices"
	"time"
)

// echoRecord is one echo request of a stream: when it was sent and when
// its reply arrived (zero if none has).
type echoRecord struct {
	sent, recv time.Time
}

func (r echoRecord) answered() bool { return !r.recv.IsZero() }

// The functions below read a stream's records; they are pure so the
// measurements they define are unit-tested.

// firstReply is the earliest reply arrival of the stream.
func firstReply(recs []echoRecord) (time.Time, bool) {
	var first time.Time
	for _, r := range recs {
		if r.answered() && (first.IsZero() || r.recv.Before(first)) {
			first = r.recv
		}
	}
	return first, !first.IsZero()
}

// firstReplySentAfter is the earliest arrival of a reply to a request sent
// at or after t. A request in flight at t (its reply arriving just after)
// says nothing about the path after t, and a request queued during an
// outage can be answered after later ones, hence the minimum over all.
func firstReplySentAfter(recs []echoRecord, t time.Time) (time.Time, bool) {
	var first time.Time
	for _, r := range recs {
		if r.answered() && !r.sent.Before(t) && (first.IsZero() || r.recv.Before(first)) {
			first = r.recv
		}
	}
	return first, !first.IsZero()
}

// lastReplyBefore is the latest reply arrival at or before t.
func lastReplyBefore(recs []echoRecord, t time.Time) (time.Time, bool) {
	var last time.Time
	for _, r := range recs {
		if r.answered() && !r.recv.After(t) && r.recv.After(last) {
			last = r.recv
		}
	}
	return last, !last.IsZero()
}

// outage measures a stream across a fault at t: back is how long after t
// the first reply to a request sent after t arrived, gap the silence
// between the last reply before t and that one (what an application saw).
func outage(recs []echoRecord, t time.Time) (back, gap time.Duration, ok bool) {
	after, ok := firstReplySentAfter(recs, t)
	if !ok {
		return 0, 0, false
	}
	before, ok := lastReplyBefore(recs, t)
	if !ok {
		return 0, 0, false
	}
	return after.Sub(t), after.Sub(before), true
}

// longestSilence is the longest time without a reply arrival that ends in
// [from, to]: between two consecutive arrivals, or from the last arrival
// to `to` if the stream is silent there. Replies before from only start
// the first interval.
func longestSilence(recs []echoRecord, from, to time.Time) time.Duration {
	var arrivals []time.Time
	for _, r := range recs {
		if r.answered() && !r.recv.After(to) {
			arrivals = append(arrivals, r.recv)
		}
	}
	slices.SortFunc(arrivals, func(a, b time.Time) int { return a.Compare(b) })
	var longest time.Duration
	prev := from
	for _, a := range arrivals {
		if a.Before(from) {
			prev = a
			continue
		}
		longest = max(longest, a.Sub(prev))
		prev = a
	}
	return max(longest, to.Sub(prev))
}

// steady reports whether every request sent in [now-window-grace,
// now-grace] was answered, and there was at least one: the path has
// carried the stream without a loss for window. grace leaves the replies
// of the latest requests time to arrive.
func steady(recs []echoRecord, now time.Time, window, grace time.Duration) bool {
	lo, hi := now.Add(-window-grace), now.Add(-grace)
	n := 0
	for _, r := range recs {
		if r.sent.Before(lo) || r.sent.After(hi) {
			continue
		}
		if !r.answered() {
			return false
		}
		n++
	}
	return n > 0
}

// lostBetween counts requests sent in [from, to) that were never answered.
func lostBetween(recs []echoRecord, from, to time.Time) int {
	n := 0
	for _, r := range recs {
		if !r.sent.Before(from) && r.sent.Before(to) && !r.answered() {
			n++
		}
	}
	return n
}
