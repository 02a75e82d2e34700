// A video encoder's target bitrate, following the uplink as a WebRTC sender follows its
// bandwidth estimate. The same rule as the native client's (`EncoderRate` in
// src/client/join.rs): when video had to be skipped (the uplink could not carry it within
// the send-backlog bound), cut to 80% of what was measurably sent, less audio's share, at
// most once per RATE_HOLD_MS (the skips of one episode, and the lower send rate they cause,
// are not news), never below MIN_VIDEO_BITRATE; after RATE_HOLD_MS without a skip, raise
// by 10%, never above the configured bitrate. Skipping alone, on an uplink too slow for
// the stream, leaves time for keyframes and little else: a stream that fits its uplink is
// what keeps keyframes, and with them every subscriber, on time.

/** Time without a skip before the encoder is allowed 10% more. */
export const RATE_HOLD_MS = 2_000;
/** The lowest bitrate a publisher cuts its video to (bit/s). */
export const MIN_VIDEO_BITRATE = 100_000;
/** What audio and packet overhead take from the measured send rate (bit/s). */
export const AUDIO_SHARE_BPS = 64_000;

/** What video may take of a measured send rate (bit/s): 80% of it, less audio's share. */
export function videoShareBps(sentBps) {
  return (sentBps - AUDIO_SHARE_BPS) * 0.8;
}

export class EncoderRate {
  /** `maxBps`: the configured bitrate, where the target starts and which it never exceeds. */
  constructor(maxBps) {
    this.maxBps = maxBps;
    this.targetBps = maxBps;
    this.lowestBps = maxBps; // the lowest target so far
    this.cuts = 0;
    this.lastChange = null; // ms (the caller's clock)
    this.lastCut = null;
  }

  /** A frame is due at `now` (ms): a new bitrate if it is time to probe up, else null. */
  onFrame(now) {
    if (this.lastChange === null) return null;
    if (this.targetBps >= this.maxBps || now - this.lastChange < RATE_HOLD_MS) return null;
    this.targetBps = Math.min(this.maxBps, this.targetBps + Math.floor(this.targetBps / 10));
    this.lastChange = now;
    return this.targetBps;
  }

  /**
   * Video was skipped at `now` (ms); `sentBps` is the measured send rate (null: none yet).
   * `reservedBps` is taken off what fits first: the targets of lower simulcast layers,
   * which share the uplink and go first (0 for a single encoding: the native rule).
   * Returns the new bitrate, or null if it stays.
   */
  onSkip(now, sentBps, reservedBps = 0) {
    this.lastChange = now;
    if (this.lastCut !== null && now - this.lastCut < RATE_HOLD_MS) return null;
    if (!Number.isFinite(sentBps)) return null; // without a measurement there is nothing to cut to
    this.lastCut = now; // a skip that cuts nothing still starts the hold
    return this.cutTo(now, videoShareBps(sentBps) - reservedBps);
  }

  /**
   * At most `bps` from `now` (ms), never below MIN_VIDEO_BITRATE: the uplink holds a queue
   * and this is this encoder's share of what it delivers. No probe up for RATE_HOLD_MS.
   * Returns the new bitrate, or null if it stays.
   */
  cutTo(now, bps) {
    this.lastChange = now;
    const fits = Math.floor(Math.max(bps, MIN_VIDEO_BITRATE));
    if (fits >= this.targetBps) return null;
    this.lastCut = now;
    this.targetBps = fits;
    this.lowestBps = Math.min(this.lowestBps, fits);
    this.cuts++;
    return fits;
  }
}
