// What one remote video tile tells the relay about its consumer: the largest picture
// worth sending to it (`set_preferred_layers`, for producers that publish layers), and
// whether it can be seen at all (`pause_consumer` while it is off-screen or the page is
// hidden, `resume_consumer` when it shows again). The relay picks the layer it forwards
// from the first, and stops the second's video altogether; when no consumer needs a
// layer, its publisher stops encoding it.

// At most one set_preferred_layers per consumer this often (a window being resized
// changes the tile size many times a second).
const PREFERENCE_INTERVAL_MS = 500;
// A tile must be out of sight this long before its video is paused (a grid that reflows,
// a quick scroll); it is resumed as soon as it shows.
const HIDE_DELAY_MS = 500;
// A refused pause or resume (rate limit, say) is tried again after this long.
const RETRY_MS = 1000;
// A layer up to this much smaller than the picture on screen is still taken for it.
const COVER_SLACK = 0.9;

/**
 * The size to ask for, from the rendered size of the tile (CSS pixels × devicePixelRatio)
 * and the producer's layers (lowest first, `{ width, height }`): the video is drawn to fit
 * the tile (object-fit: contain), and the relay forwards the highest layer within the size
 * asked, so the size asked is that of the smallest layer that covers the picture on screen
 * (a layer smaller than that would be scaled up, and look blurred). A picture larger than
 * every layer needs no limit: `{}`. Exported for tests.
 */
export function preferredSize(cssWidth, cssHeight, dpr, layers) {
  const top = layers.at(-1);
  if (!top || !(cssWidth > 0) || !(cssHeight > 0)) return {};
  const scale = Math.min((cssWidth * dpr) / top.width, (cssHeight * dpr) / top.height);
  const need = { width: top.width * scale, height: top.height * scale };
  const cover = layers.find((l) => l.width >= need.width * COVER_SLACK && l.height >= need.height * COVER_SLACK);
  if (!cover || cover === top) return {};
  return { max_width: cover.width, max_height: cover.height };
}

export class ConsumerView {
  /**
   * `element` is the tile's canvas; `request(type, fields)` sends a control request and
   * resolves with its result (it rejects with the relay's error).
   */
  constructor({ element, consumerId, producer, paused = false, request }) {
    this.element = element;
    this.consumerId = consumerId;
    this.layers = Array.isArray(producer.layers) ? producer.layers.filter((l) => l.width > 0 && l.height > 0) : [];
    this.request = request;
    this.closed = false;
    // Visibility, and the consumer's paused state as the relay has it.
    this.intersecting = true; // until the observer says otherwise
    this.paused = paused;
    this.wantPaused = paused;
    this.pauseBusy = false;
    this.hideTimer = null;
    this.retryTimer = null;
    // Preferences: the last one sent (null: none yet), and when.
    this.preferred = null;
    this.preferenceAt = -Infinity;
    this.preferenceTimer = null;
    this.requests = 0; // sent, for window.synapse.state()

    this.onVisibility = () => this.updateVisibility();
    document.addEventListener('visibilitychange', this.onVisibility);
    this.intersection = new IntersectionObserver((entries) => {
      this.intersecting = entries.at(-1).isIntersecting;
      this.updateVisibility();
    });
    this.intersection.observe(element);
    if (this.layers.length > 0) {
      this.resize = new ResizeObserver(() => this.schedulePreference());
      this.resize.observe(element);
      this.schedulePreference();
    }
    this.updateVisibility();
  }

  get visible() {
    return !document.hidden && this.intersecting;
  }

  // -------------------------------------------------------------------------
  // set_preferred_layers

  schedulePreference() {
    if (this.closed || this.preferenceTimer !== null) return;
    const wait = Math.max(0, this.preferenceAt + PREFERENCE_INTERVAL_MS - performance.now());
    this.preferenceTimer = setTimeout(() => {
      this.preferenceTimer = null;
      this.sendPreference();
    }, wait);
  }

  sendPreference() {
    if (this.closed) return;
    const { clientWidth, clientHeight } = this.element;
    // No box (display: none, or not laid out yet): nothing to learn; visibility covers it.
    if (!clientWidth || !clientHeight) return;
    const wanted = preferredSize(clientWidth, clientHeight, window.devicePixelRatio || 1, this.layers);
    if (this.preferred && this.preferred.max_width === wanted.max_width && this.preferred.max_height === wanted.max_height) {
      return;
    }
    this.preferred = wanted;
    this.preferenceAt = performance.now();
    this.requests++;
    this.request('set_preferred_layers', { consumer_id: this.consumerId, ...wanted }).catch((e) => {
      // Not for people: the relay then forwards what it would anyway.
      if (!this.closed) console.warn('set_preferred_layers:', e);
    });
  }

  // -------------------------------------------------------------------------
  // pause_consumer / resume_consumer

  updateVisibility() {
    if (this.closed) return;
    if (this.visible) {
      clearTimeout(this.hideTimer);
      this.hideTimer = null;
      this.setWantPaused(false);
    } else if (this.hideTimer === null && !this.wantPaused) {
      this.hideTimer = setTimeout(() => {
        this.hideTimer = null;
        if (!this.visible) this.setWantPaused(true);
      }, HIDE_DELAY_MS);
    }
  }

  setWantPaused(paused) {
    this.wantPaused = paused;
    this.applyPause();
  }

  /** One request at a time; the latest wish wins. */
  applyPause() {
    if (this.closed || this.pauseBusy || this.retryTimer !== null || this.wantPaused === this.paused) return;
    const target = this.wantPaused;
    this.pauseBusy = true;
    this.requests++;
    this.request(target ? 'pause_consumer' : 'resume_consumer', { consumer_id: this.consumerId })
      .then(
        () => {
          this.paused = target;
        },
        (e) => {
          if (this.closed) return;
          if (e?.code === 'unknown_consumer') {
            this.closed = true; // the consumer is gone (consumer_closed follows)
            return;
          }
          console.warn(`${target ? 'pause' : 'resume'}_consumer:`, e);
          this.retryTimer = setTimeout(() => {
            this.retryTimer = null;
            this.applyPause();
          }, RETRY_MS);
        },
      )
      .finally(() => {
        this.pauseBusy = false;
        this.applyPause();
      });
  }

  /** Plain data for window.synapse.state(). */
  snapshot() {
    return {
      visible: this.visible,
      paused: this.paused,
      preferred: this.preferred ? { ...this.preferred } : null,
      requests: this.requests,
    };
  }

  close() {
    this.closed = true;
    document.removeEventListener('visibilitychange', this.onVisibility);
    this.intersection.disconnect();
    this.resize?.disconnect();
    clearTimeout(this.hideTimer);
    clearTimeout(this.retryTimer);
    clearTimeout(this.preferenceTimer);
  }
}
