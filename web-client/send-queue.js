// The video sender's streams and the age of what waits in them: the send backlog, which
// VideoSender (media.js) keeps under a bound.
//
// How the backlog is measured. It is how long the oldest frame that has not left this
// browser has waited since the encoder handed it over (not since capture: encoding time is
// the machine's, and skipping frames does not shorten it). Stream writes cannot tell it:
// Chromium resolves a write as soon as its bytes are in the stream's buffer (about 128 KiB
// per stream, measured with Chromium 156: a whole 2 s group at 300 kbit/s), not when they
// are sent, and it has no stream statistics. What it does tell is when a finished stream
// has been delivered: `writer.close()` resolves once the relay has acknowledged all of it.
// So each group of pictures (a keyframe and its delta frames) is written as a run of short
// streams, "segments", each finished after `segmentMs` of frames; the relay reads a
// producer's streams in order and regroups frames by their keyframe flag, so it forwards
// the same frames as from one stream per group. The frames of a segment not yet
// acknowledged have waited, to within a segment, in this browser and then in the network:
// the round trip, and the queue that the congestion controller builds at the uplink when
// video exceeds it (Chromium fills a 1 s drop-tail queue). That network part is taken off:
// it is the relay's smoothed round-trip time to this peer (transport_stats, once a second),
// whose acknowledgements cross the same uplink queue, or without one the smallest delay
// between finishing a segment and its acknowledgement lately. Skipping frames cannot empty
// a network queue that is already built; only a lower bitrate would.

// The smallest segment-delivery delay over this long is the network's part when the relay
// does not say. Short, so that it follows a network queue as it grows and shrinks.
const BASE_WINDOW_MS = 2_000;
// The relay's round-trip time is used for this long after it came.
const RELAY_RTT_FRESH_MS = 3_000;

// Stream reset code for late video (CONSUMER_LATE, docs/PROTOCOL.md section 11).
const CLOSE_LATE = 7;

/** The reason a late stream is reset with: carries CLOSE_LATE where the browser can. */
function lateError() {
  // Chromium takes one init dictionary; the specification, a message and options.
  for (const args of [[{ message: 'late', streamErrorCode: CLOSE_LATE }], ['late', { streamErrorCode: CLOSE_LATE }]]) {
    try {
      const error = new WebTransportError(...args);
      if (error.streamErrorCode === CLOSE_LATE) return error;
    } catch {
      // Not this form, or no WebTransportError at all.
    }
  }
  return new Error('late');
}

/** A short stream: some consecutive frames of one group. */
class Segment {
  constructor(writer, now) {
    this.writer = writer; // a promise: the stream opens asynchronously
    this.frames = []; // { handedAt }
    this.lastWriteAt = now;
    this.closedAt = null;
    this.acked = false;
    this.abandoned = false;
    this.first = false; // the group's first segment, the one with its keyframe
    // Resolves true when acknowledged, false if it was not.
    this.delivered = new Promise((resolve) => (this.settle = resolve));
  }
}

/** A group of pictures: its segments in order, the first starting with the keyframe. */
class Group {
  constructor() {
    this.segments = []; // unacknowledged ones only, oldest first
    this.opened = 0; // segments opened
    this.keyAcked = false;
    this.finished = false; // no more frames will be added
    this.failed = false;
  }
}

export class SendQueue {
  /**
   * `openStream()` resolves with a writer whose stream header is written; `clock()` gives
   * milliseconds (performance.now()); `segmentMs` is how much video one stream carries;
   * `onWriteError(e)` is called once per group whose stream failed other than by `abandon()`.
   */
  constructor({ openStream, clock, segmentMs, onWriteError }) {
    this.openStream = openStream;
    this.clock = clock;
    this.segmentMs = segmentMs;
    this.onWriteError = onWriteError;
    this.groups = []; // oldest first; the last is the open one unless it is finished
    this.open = null; // the segment being written
    this.deliveries = []; // { at, ms } of acknowledged segments, oldest first
    this.relayRtt = null; // { ms, at } from the relay's transport_stats
    this.backlogMs = 0;
    this.networkMs = 0; // the network's part of a delivery's delay
  }

  get current() {
    const last = this.groups.at(-1);
    return last && !last.finished ? last : null;
  }

  /** No more frames for the open group; what was written keeps counting until delivered. */
  finishGroup() {
    this.closeSegment();
    const group = this.current;
    if (group) group.finished = true;
  }

  /** Starts a new group, finishing the open one: call it with a keyframe. */
  startGroup() {
    this.finishGroup();
    this.groups.push(new Group());
  }

  /** The relay measured this round-trip time (ms) on its connection to this peer. */
  setRelayRtt(ms) {
    if (Number.isFinite(ms)) this.relayRtt = { ms, at: this.clock() };
  }

  /**
   * Writes one encoded frame in the open group. Returns a promise of whether it was
   * delivered (false: its stream failed or was abandoned), or null if no group is open.
   */
  write(bytes) {
    const group = this.current;
    if (!group) return null;
    const now = this.clock();
    if (!this.open) {
      const writer = this.openStream();
      writer.catch(() => {}); // reported through the write below
      this.open = new Segment(writer, now);
      this.open.group = group;
      this.open.first = group.opened++ === 0;
      group.segments.push(this.open);
    }
    const segment = this.open;
    segment.frames.push({ handedAt: now });
    segment.lastWriteAt = now;
    segment.writer.then((w) => w.write(bytes)).catch((e) => this.failed(segment, e));
    if (now - segment.frames[0].handedAt >= this.segmentMs) this.closeSegment();
    return segment.delivered;
  }

  /** Finishes the open segment: its delivery is what the backlog is measured by. */
  closeSegment() {
    const segment = this.open;
    if (!segment) return;
    this.open = null;
    segment.closedAt = this.clock();
    segment.writer
      .then((w) => w.close())
      .then(() => {
        const now = this.clock();
        segment.acked = true;
        this.deliveries.push({ at: now, ms: now - segment.closedAt });
        const group = segment.group;
        if (segment.first) group.keyAcked = true;
        group.segments = group.segments.filter((s) => s !== segment);
        segment.settle(true);
      })
      .catch((e) => this.failed(segment, e));
  }

  /** The relay stopped a stream (it refused a frame), or the session ended. */
  failed(segment, e) {
    if (segment.abandoned || segment.acked) return;
    const group = segment.group;
    const first = !group.failed;
    group.failed = true;
    this.giveUp(group);
    if (first) this.onWriteError(e);
  }

  /** Recomputes the backlog (ms) from what is not delivered yet. Cheap: call it per frame. */
  update() {
    const now = this.clock();
    // A segment that gets no more frames (they are skipped, or the camera is off) is
    // finished now. Twice segmentMs: at a low frame rate a segment still gets two frames.
    if (this.open && now - this.open.lastWriteAt >= 2 * this.segmentMs) this.closeSegment();
    this.groups = this.groups.filter((g) => !g.finished || g.segments.length > 0);
    while (this.deliveries.length && now - this.deliveries[0].at > BASE_WINDOW_MS) this.deliveries.shift();
    if (this.relayRtt && now - this.relayRtt.at < RELAY_RTT_FRESH_MS) this.networkMs = this.relayRtt.ms;
    else this.networkMs = this.deliveries.length ? Math.min(...this.deliveries.map((d) => d.ms)) : 0;
    let waited = 0;
    for (const group of this.groups) {
      for (const segment of group.segments) waited = Math.max(waited, this.waitedMs(segment, now));
    }
    this.backlogMs = Math.max(0, waited - this.networkMs);
    return this.backlogMs;
  }

  /**
   * How long the frames of an undelivered segment have waited: since it was finished (or
   * now, while it is open), plus at most segmentMs for their time in it. A segment kept
   * open by a pause of the camera or the encoder is not late for it.
   */
  waitedMs(segment, now) {
    const first = segment.frames[0].handedAt;
    return now - Math.max(first, (segment.closedAt ?? now) - this.segmentMs);
  }

  /**
   * Resets the streams of every group with undelivered frames, so that nothing more of
   * them is sent, except (unless `all`) the open group while its keyframe is not delivered:
   * resetting it would only send the next keyframe, as large, from the start. Returns the
   * { groups, frames } given up.
   */
  abandon({ all = false } = {}) {
    let groups = 0;
    let frames = 0;
    for (const group of [...this.groups]) {
      if (group.segments.length === 0) continue;
      if (!all && group === this.current && !group.keyAcked) continue;
      groups++;
      frames += this.giveUp(group);
    }
    this.update();
    return { groups, frames };
  }

  /** Resets a group's undelivered segments and forgets the group; returns their frames. */
  giveUp(group) {
    let frames = 0;
    for (const segment of group.segments) {
      segment.abandoned = true;
      frames += segment.frames.length;
      segment.writer.then((w) => w.abort(lateError())).catch(() => {});
      segment.settle(false);
    }
    group.segments = [];
    group.finished = true;
    if (this.open?.group === group) this.open = null;
    this.groups = this.groups.filter((g) => g !== group);
    return frames;
  }

  /** True while the open group's keyframe has not been delivered. */
  get keyframeGoingOut() {
    const group = this.current;
    return Boolean(group && !group.keyAcked && group.segments.length > 0);
  }

  /** Finishes the open stream and forgets the rest (the sender stops). */
  close() {
    this.finishGroup();
    this.groups = [];
  }
}
