// The side panels of the call screen: who is in the call (and what each sends), and the
// chat. They only draw; app.js keeps the state and talks to the relay. The data-*
// attributes are read by the browser tests (tests/browser/): keep their names stable.

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const MIC_TEXT = { on: 'microphone on', muted: 'microphone muted', none: 'no microphone' };
const CAMERA_TEXT = { on: 'camera on', off: 'camera off', none: 'no camera' };

/**
 * The participant list: one line per peer, this page's first. Each entry is
 * `{ peerId, name, self, mic: 'on'|'muted'|'none', camera: 'on'|'off'|'none', screen,
 * speaking, reconnecting }`; each line carries them as `data-participant-id`,
 * `data-participant-name`, `data-mic`, `data-camera`, `data-screen`, `data-speaking` and
 * `data-reconnecting` (its session dropped and the relay keeps its place).
 */
export class ParticipantList {
  constructor(list, count) {
    this.list = list;
    this.count = count;
  }

  render(participants) {
    const items = participants.map((p) => {
      const li = el('li', 'participant');
      const d = li.dataset;
      d.participantId = String(p.peerId ?? '');
      d.participantName = p.name;
      d.mic = p.mic;
      d.camera = p.camera;
      d.screen = String(p.screen);
      d.speaking = String(p.speaking);
      d.reconnecting = String(p.reconnecting === true);
      li.classList.toggle('speaking', p.speaking);
      li.classList.toggle('reconnecting', p.reconnecting === true);
      li.append(el('span', 'participant-name', p.self ? `${p.name} (you)` : p.name));
      const states = [MIC_TEXT[p.mic], CAMERA_TEXT[p.camera]];
      if (p.screen) states.push('sharing screen');
      if (p.speaking) states.push('speaking');
      if (p.reconnecting) states.unshift('reconnecting…');
      li.append(el('span', 'participant-state', states.join(' · ')));
      return li;
    });
    this.list.replaceChildren(...items);
    this.count.textContent = `(${participants.length})`;
  }

  clear() {
    this.list.replaceChildren();
    this.count.textContent = '';
  }
}

/**
 * The chat: messages with their sender's name, a form to write one, and a line for what
 * went wrong. `onSend(text)` sends a message; it resolves once the relay has taken it
 * (then the form is cleared) and rejects with an Error whose message is a sentence for
 * people (the text stays in the form, to try again). Each message is an
 * `li[data-from-name]` (with `data-own` for this page's own).
 */
export class ChatPanel {
  constructor({ root, messages, form, input, button, error, onSend }) {
    Object.assign(this, { root, messages, form, input, button, error, onSend });
    this.log = []; // { from, name, text, own } for window.synapse.state()
    this.sending = false;
    this.onSubmit = (e) => {
      e.preventDefault();
      this.send();
    };
    form.addEventListener('submit', this.onSubmit);
  }

  show(shown) {
    this.root.hidden = !shown;
  }

  /** Lets the person write, or not (with a sentence saying why). */
  setEnabled(enabled, why = '') {
    this.input.disabled = !enabled;
    this.button.disabled = !enabled;
    this.setError(enabled ? '' : why);
  }

  /** A refusal (`note` false) or a remark about a message that was sent (`note` true). */
  setError(text, note = false) {
    this.error.textContent = text;
    this.error.hidden = !text;
    this.error.classList.toggle('note', note);
  }

  async send() {
    const text = this.input.value.trim();
    if (!text || this.sending) return;
    this.sending = true;
    this.button.disabled = true;
    try {
      const note = await this.onSend(text);
      this.input.value = '';
      this.setError(note ?? '', true);
    } catch (e) {
      this.setError(e.message);
    } finally {
      this.sending = false;
      this.button.disabled = this.input.disabled;
      if (!this.input.disabled) this.input.focus();
    }
  }

  add({ from = null, name, text, own = false }) {
    this.log.push({ from, name, text, own });
    const li = el('li', own ? 'chat-message own' : 'chat-message');
    li.dataset.fromName = name;
    if (own) li.dataset.own = '';
    li.append(el('span', 'chat-name', own ? `${name} (you)` : name), el('span', 'chat-text', text));
    const atBottom = this.messages.scrollTop + this.messages.clientHeight >= this.messages.scrollHeight - 8;
    this.messages.append(li);
    // Follow new messages unless the person scrolled back to read older ones.
    if (atBottom || own) this.messages.scrollTop = this.messages.scrollHeight;
  }

  /** Empties the panel for the next call. */
  reset() {
    this.log = [];
    this.messages.replaceChildren();
    this.input.value = '';
    this.setError('');
    this.root.hidden = true;
  }
}
