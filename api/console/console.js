/* Chronicle web console: one classic script, no build step, no framework (see README.md). */
(function () {
  'use strict';

  const TOKEN_KEY = 'chronicle.token';
  const HISTORY_KEY = 'chronicle.verifications';
  const PAGE_LIMIT = 500;
  const LIVE_CAP = 200;
  const HISTORY_CAP = 50;
  const CHART_HEIGHT = 320;
  const MAX_BUCKETS = 2000;
  // The store's placeholder for an erased field (chronicle_domain::subject::ERASED); the
  // API writes erased guests as null + erased: true, the CLI's exports keep the placeholder.
  const ERASED = '[erased]';
  const PALETTE = ['#0b57d0', '#b3261e', '#146c2e', '#7b3fb8', '#a15c00', '#00696f'];
  const ID_KEYS = {
    account_id: 'account',
    booking_id: 'booking',
    payment_id: 'payment',
    subscription_id: 'subscription',
  };
  const MONEY_KEYS = new Set([
    'amount', 'balance', 'balance_after', 'overdraft_limit', 'captured', 'refunded', 'revenue',
    'next_charge_amount', 'balance_due',
  ]);
  const TIME_PATTERN = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$/;
  // The event types of domain/src (Account, Booking, Payment, Subscription and Subject
  // events): the feed names each SSE event after its type, so each needs a listener.
  const FEED_EVENT_TYPES = [
    'AccountOpened', 'FundsDeposited', 'FundsWithdrawn', 'AccountClosed',
    'BookingRequested', 'BookingConfirmed', 'BookingRejected', 'BookingCancelled', 'BookingExpired',
    'PaymentInitiated', 'PaymentCaptured', 'PaymentFailed', 'PaymentRefunded', 'ChargeFailed',
    'PaymentSuspended',
    'SubscriptionStarted', 'PeriodCharged', 'BalanceCarried', 'PlanChanged', 'PlanChangeScheduled',
    'SubscriptionPaused', 'SubscriptionResumed', 'CancellationScheduled', 'SubscriptionCancelled',
    'SubscriptionEnded',
    'PersonalDataErased',
  ];
  const VIEWS = {
    streams: { label: 'Streams', allowed: () => hasRole('client', 'auditor', 'admin') },
    integrity: { label: 'Integrity', allowed: canAudit },
    analytics: { label: 'Analytics', allowed: () => hasRole('analyst', 'admin') },
    live: { label: 'Live', allowed: () => true },
  };

  let session = null; // { token, subject, roles, exp }
  const stream = { type: null, id: null, events: [] };
  let stateRequest = 0;
  let sliderTimer = null;
  let currentView = null;
  let integrityLoaded = false;
  let revenueChart = null;
  const live = { wanted: false, source: null, lastId: null, timer: null, delay: 1000, refusals: 0 };

  // ---- DOM and formatting helpers ----

  function $(selector) {
    return document.querySelector(selector);
  }

  /** An element with props (class, text, data, or attributes) and children. */
  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === 'class') node.className = value;
      else if (key === 'text') node.textContent = value;
      else if (key === 'data') setData(node, value);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    node.append(...children.filter((child) => child !== null && child !== undefined && child !== false));
    return node;
  }

  function setData(node, values) {
    for (const [key, value] of Object.entries(values)) {
      if (value !== undefined && value !== null) node.dataset[key] = String(value);
    }
  }

  function capitalize(text) {
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  function shortId(id) {
    return id.length > 13 ? `${id.slice(0, 8)}…` : id;
  }

  /** Minor units as major units with the currency: 1234, EUR -> "12.34 EUR". */
  function formatMoney(amount, currency) {
    const abs = Math.abs(amount);
    const major = `${Math.floor(abs / 100)}.${String(abs % 100).padStart(2, '0')}`;
    return `${amount < 0 ? '-' : ''}${major} ${currency}`;
  }

  function moneyNode(amount, currency, id) {
    return el('span', { class: 'money', id, data: { amount, currency }, text: formatMoney(amount, currency) });
  }

  function formatTime(text) {
    const date = new Date(text);
    if (Number.isNaN(date.getTime())) return text;
    return date.toISOString().replace('T', ' ').replace('Z', ' UTC');
  }

  function timeNode(text) {
    return el('time', { datetime: text, title: text, text: formatTime(text) });
  }

  function erasedNode() {
    return el('span', { class: 'erased', text: 'erased' });
  }

  function idLink(type, id, text, selectEventId) {
    return el('button', {
      type: 'button', class: 'id-link', title: `Open ${type} ${id}`,
      data: { type, id, select: selectEventId }, text: text || id,
    });
  }

  /** A date or datetime-local value read as UTC, in RFC 3339; '' when empty. */
  function utcFromInput(input) {
    const value = input.value;
    const completion = { 10: 'T00:00:00Z', 16: ':00Z', 19: 'Z' }[value.length];
    return value ? value + (completion || '') : '';
  }

  function query(params) {
    const search = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) if (value) search.set(key, value);
    return search.toString();
  }

  // ---- Rendering values: read-model state and event payloads ----

  function currencyOf(object) {
    if (!object || typeof object !== 'object') return null;
    if (typeof object.currency === 'string') return object.currency;
    return object.plan && typeof object.plan.currency === 'string' ? object.plan.currency : null;
  }

  function isMoney(value) {
    return Number.isInteger(value.amount) && typeof value.currency === 'string'
      && Object.keys(value).length === 2;
  }

  /** A value of a read model, with ids as links, money formatted and erasures shown. */
  function renderValue(value, key, parent) {
    if (value === ERASED) return erasedNode();
    if (value === null || value === undefined) {
      return parent && parent.erased === true ? erasedNode() : el('span', { class: 'muted', text: '—' });
    }
    if (Array.isArray(value)) {
      if (value.every((item) => item === null || typeof item !== 'object')) {
        return el('span', { text: value.length ? value.join(', ') : '—' });
      }
      return el('ol', { class: 'value-list' }, ...value.map((item) => el('li', {}, renderValue(item, key, value))));
    }
    if (typeof value === 'object') {
      return isMoney(value) ? moneyNode(value.amount, value.currency) : renderObject(value);
    }
    if (ID_KEYS[key] && typeof value === 'string') return idLink(ID_KEYS[key], value);
    if (MONEY_KEYS.has(key) && Number.isInteger(value) && currencyOf(parent)) {
      return moneyNode(value, currencyOf(parent));
    }
    if (typeof value === 'string' && TIME_PATTERN.test(value)) return timeNode(value);
    return el('span', { text: String(value) });
  }

  function renderObject(object) {
    const list = el('dl', { class: 'fields' });
    for (const [key, value] of Object.entries(object)) {
      if (key === 'erased') continue; // shown on the erased fields themselves
      list.append(el('div', {},
        el('dt', { text: key.replace(/_/g, ' ') }),
        el('dd', { data: { field: key } }, renderValue(value, key, object))));
    }
    return list;
  }

  /** Pretty JSON in a <pre>, with other streams' ids as buttons and erased fields marked. */
  function renderJson(value, ownId) {
    const pre = el('pre', { class: 'json' });
    const write = (item, indent, key, parent) => {
      if (item === null || item === undefined) {
        pre.append(parent && parent.erased === true ? erasedNode() : 'null');
      } else if (typeof item === 'object') {
        const entries = Array.isArray(item) ? item.map((part) => [null, part]) : Object.entries(item);
        const [open, close] = Array.isArray(item) ? ['[', ']'] : ['{', '}'];
        if (!entries.length) {
          pre.append(open + close);
          return;
        }
        pre.append(`${open}\n`);
        entries.forEach(([name, part], index) => {
          pre.append(indent + '  ' + (name === null ? '' : `${JSON.stringify(name)}: `));
          write(part, `${indent}  `, name, item);
          pre.append(index < entries.length - 1 ? ',\n' : '\n');
        });
        pre.append(indent + close);
      } else if (item === ERASED) {
        pre.append(erasedNode());
      } else if (ID_KEYS[key] && typeof item === 'string' && item !== ownId) {
        pre.append(idLink(ID_KEYS[key], item, JSON.stringify(item)));
      } else {
        pre.append(JSON.stringify(item));
      }
    };
    write(value, '', null, null);
    return pre;
  }

  /** The other streams a payload names (account_id, booking_id, ...), once each. */
  function linkedStreams(value, ownId, found = new Map()) {
    if (!value || typeof value !== 'object') return found;
    for (const [key, item] of Object.entries(value)) {
      if (ID_KEYS[key] && typeof item === 'string' && item !== ownId) found.set(item, ID_KEYS[key]);
      else linkedStreams(item, ownId, found);
    }
    return found;
  }

  // ---- Errors and the API ----

  class ConsoleError extends Error {
    constructor(title, detail, status) {
      super(detail || title);
      this.title = title;
      this.detail = detail || '';
      this.status = status;
    }
  }

  function showError(error) {
    const box = $('#error');
    const known = error instanceof ConsoleError;
    box.querySelector('.title').textContent = known ? error.title : 'Unexpected error';
    box.querySelector('.detail').textContent = known ? error.detail : String(error.message || error);
    box.hidden = false;
  }

  function clearError() {
    const box = $('#error');
    box.hidden = true;
    box.querySelector('.title').textContent = '';
    box.querySelector('.detail').textContent = '';
  }

  /** Runs a user action: its error is shown, its success clears the last error. */
  async function run(action) {
    try {
      await action();
      clearError();
    } catch (error) {
      showError(error);
    }
  }

  /** Calls the API with the bearer token; problem+json answers become ConsoleErrors. */
  async function api(path, options = {}) {
    const headers = { Accept: 'application/json', Authorization: `Bearer ${session.token}` };
    let response;
    try {
      response = await fetch(path, { ...options, headers: { ...headers, ...options.headers } });
    } catch (error) {
      throw new ConsoleError('Network error', `The API could not be reached (${error.message}).`);
    }
    if (!response.ok) throw await problemOf(response);
    return response.json();
  }

  async function problemOf(response) {
    let problem = {};
    try {
      problem = await response.json();
    } catch {
      // Not JSON: the status line has to do.
    }
    return new ConsoleError(
      problem.title || response.statusText || `HTTP ${response.status}`,
      problem.detail || `The API answered ${response.status}.`,
      response.status,
    );
  }

  /** Every item of a paged list, following next_cursor. */
  async function allPages(path) {
    const items = [];
    const separator = path.includes('?') ? '&' : '?';
    let cursor = null;
    do {
      const page = await api(cursor ? `${path}${separator}cursor=${encodeURIComponent(cursor)}` : path);
      items.push(...page.items);
      cursor = page.next_cursor;
    } while (cursor);
    return items;
  }

  // ---- Session, navigation and routing ----

  function hasRole(...roles) {
    return Boolean(session) && roles.some((role) => session.roles.includes(role));
  }

  function canAudit() {
    return hasRole('auditor', 'admin');
  }

  /** The claims of a JWT, read only to choose views: the API checks the token. */
  function decodeToken(token) {
    const part = token.split('.')[1];
    if (!part) throw new ConsoleError('Invalid token', 'A JWT has three parts separated by dots.');
    try {
      const base64 = part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '=');
      const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
      const claims = JSON.parse(new TextDecoder().decode(bytes));
      const roles = Array.isArray(claims.roles) ? claims.roles.map(String) : [];
      return { subject: String(claims.sub || ''), roles, exp: claims.exp };
    } catch {
      throw new ConsoleError('Invalid token', 'Its payload is not base64url-encoded JSON.');
    }
  }

  function signIn(token) {
    const claims = decodeToken(token);
    if (Number.isFinite(claims.exp) && claims.exp * 1000 <= Date.now()) {
      throw new ConsoleError('Token expired', `It expired at ${formatTime(new Date(claims.exp * 1000).toISOString())}; get a new one.`);
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    session = { token, ...claims };
    enterConsole();
  }

  function enterConsole() {
    $('#sign-in-panel').hidden = true;
    $('#token').value = '';
    $('#who').replaceChildren('Signed in as ', el('strong', { text: session.subject }),
      ` · roles: ${session.roles.join(', ') || 'none'}`);
    $('#session').hidden = false;
    for (const [name, view] of Object.entries(VIEWS)) {
      if (!view.allowed()) $(`#view-${name}`).remove();
    }
    document.querySelectorAll(canAudit() ? '.client-only' : '.audit-only').forEach((node) => node.remove());
    buildNav();
    route(false);
  }

  function signOut() {
    stopLive();
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(HISTORY_KEY);
    location.replace(location.pathname + location.search); // a fresh page, every view back
  }

  function buildNav() {
    const links = Object.entries(VIEWS)
      .filter(([, view]) => view.allowed())
      .map(([name, view]) => el('li', {}, el('a', { id: `nav-${name}`, href: `#/${name}`, text: view.label })));
    $('#nav-list').replaceChildren(...links);
    $('#nav').hidden = false;
  }

  function defaultView() {
    if (canAudit()) return 'streams';
    return hasRole('analyst') ? 'analytics' : 'live';
  }

  function route(moveFocus) {
    if (!session) return;
    if (currentView && !location.hash.startsWith('#/')) return; // an in-page anchor (skip link)
    let name = location.hash.replace(/^#\//, '');
    if (!VIEWS[name] || !VIEWS[name].allowed()) {
      name = defaultView();
      history.replaceState(null, '', `#/${name}`);
    }
    currentView = name;
    document.querySelectorAll('.view').forEach((view) => { view.hidden = view.id !== `view-${name}`; });
    document.querySelectorAll('#nav-list a').forEach((link) => {
      if (link.id === `nav-${name}`) link.setAttribute('aria-current', 'page');
      else link.removeAttribute('aria-current');
    });
    if (moveFocus) $(`#view-${name} h2`).focus();
    if (name === 'integrity' && !integrityLoaded) run(loadIntegrity);
  }

  // ---- Streams ----

  function goToStreams() {
    if (location.hash !== '#/streams') location.hash = '#/streams';
  }

  /** Opens a stream: its whole history for auditors, its current state for others. */
  async function openStream(type, id, selectEventId) {
    goToStreams();
    $('#stream-type').value = type;
    $('#stream-id').value = id;
    const title = $('#stream-title');
    title.textContent = `${capitalize(type)} ${id}`;
    setData(title, { type, id });
    if (!canAudit()) {
      await showCurrentState(type, id);
      return;
    }
    if (stream.type === type && stream.id === id && selectEventId) {
      const index = stream.events.findIndex((event) => event.event_id === selectEventId);
      if (index >= 0) {
        await selectEvent(index, true);
        return;
      }
    }
    Object.assign(stream, { type, id, events: [] });
    renderTimeline();
    clearState();
    const events = await allPages(`/v1/audit/${type}/${encodeURIComponent(id)}/events?limit=${PAGE_LIMIT}`);
    if (stream.type !== type || stream.id !== id) return; // another stream was opened meanwhile
    stream.events = events;
    renderTimeline();
    const index = selectEventId ? events.findIndex((event) => event.event_id === selectEventId) : -1;
    await selectEvent(index >= 0 ? index : events.length - 1, true);
  }

  function renderTimeline() {
    const count = stream.events.length;
    $('#timeline').replaceChildren(...stream.events.map(eventItem));
    const slider = $('#state-slider');
    slider.max = String(Math.max(count, 1));
    slider.value = String(Math.max(count, 1));
    slider.disabled = count === 0;
    $('#slider-position').textContent = count ? '' : 'No events loaded.';
  }

  function eventItem(event, index) {
    const meta = event.metadata || {};
    return el('li', {
      class: 'event',
      data: {
        eventId: event.event_id, position: event.global_position, sequence: event.sequence,
        type: event.event_type, index,
      },
    },
    el('div', { class: 'event-head' },
      el('button', { type: 'button', class: 'event-select', text: `#${event.sequence} ${event.event_type}` }),
      timeNode(event.recorded_at),
      el('span', { class: 'muted', text: `position ${event.global_position}` }),
      el('span', { class: 'event-links' }, ...[...linkedStreams(event.payload, stream.id)]
        .map(([id, type]) => idLink(type, id, `${type} ${shortId(id)}`))),
      el('button', { type: 'button', class: 'caused', text: 'What it caused' })),
    el('dl', { class: 'event-meta' },
      metaField('Actor', meta.actor && el('span', { text: meta.actor })),
      metaField('Correlation', meta.correlation_id && el('code', { text: meta.correlation_id })),
      metaField('Caused by', meta.causation_id && el('button', {
        type: 'button', class: 'causation', data: { causation: meta.causation_id },
        title: 'Open the event that caused this one', text: meta.causation_id,
      }))),
    el('details', {}, el('summary', { text: 'Payload' }),
      event.payload == null ? el('p', { class: 'muted', text: 'No payload.' }) : renderJson(event.payload, stream.id)),
    el('details', {}, el('summary', { text: 'Metadata' }), renderJson(meta, stream.id)));
  }

  function metaField(label, value) {
    return el('div', {}, el('dt', { text: label }), el('dd', {}, value || el('span', { class: 'muted', text: '—' })));
  }

  async function selectEvent(index, scroll) {
    const event = stream.events[index];
    if (!event) return;
    for (const item of $('#timeline').children) {
      const selected = Number(item.dataset.index) === index;
      item.classList.toggle('selected', selected);
      if (selected) item.setAttribute('aria-current', 'true');
      else item.removeAttribute('aria-current');
      if (selected && scroll) item.scrollIntoView({ block: 'nearest' });
    }
    $('#state-slider').value = String(index + 1);
    $('#slider-position').textContent =
      `Event ${index + 1} of ${stream.events.length}: ${event.event_type}, ${formatTime(event.recorded_at)}`;
    await loadStateAfter(event);
  }

  function clearState() {
    stateRequest += 1;
    const box = $('#state');
    box.replaceChildren();
    box.removeAttribute('data-sequence');
    box.removeAttribute('data-version');
    $('#state-note').textContent = '';
  }

  /** The aggregate's state after `event`, from the temporal read models. */
  async function loadStateAfter(event) {
    clearState();
    const request = stateRequest;
    const box = $('#state');
    box.setAttribute('aria-busy', 'true');
    try {
      const { note, nodes } = await fetchStateAt(stream.type, stream.id, event.recorded_at);
      if (request !== stateRequest) return;
      $('#state-note').textContent = `After event #${event.sequence} (${event.event_type}): ${note}`;
      box.replaceChildren(...nodes);
      box.dataset.sequence = String(event.sequence);
    } catch (error) {
      if (request === stateRequest) throw error;
    } finally {
      if (request === stateRequest) box.removeAttribute('aria-busy');
    }
  }

  async function fetchStateAt(type, id, at) {
    const path = encodeURIComponent(id);
    const asOf = `as_of=${encodeURIComponent(at)}`;
    if (type === 'account') {
      const balance = await api(`/v1/accounts/${path}/balance?${asOf}`);
      return { note: `balance as of ${formatTime(at)}.`, nodes: [balanceLine(balance), renderObject(balance)] };
    }
    if (type === 'booking') {
      const booking = await api(`/v1/bookings/${path}?${asOf}`);
      return { note: `the booking as of ${formatTime(at)}.`, nodes: [renderObject(booking)] };
    }
    const payment = await api(`/v1/payments/${path}`);
    return { note: 'current state (no as-of for payments).', nodes: [renderObject(payment)] };
  }

  function balanceLine(view) {
    return el('p', { class: 'balance' }, 'Balance ', moneyNode(view.balance, view.currency, 'state-balance'));
  }

  /** Without the auditor role: the current state from the ordinary read endpoints. */
  async function showCurrentState(type, id) {
    clearState();
    const request = stateRequest;
    const path = encodeURIComponent(id);
    const read = { account: 'accounts', booking: 'bookings', payment: 'payments', subscription: 'payments' }[type];
    const view = await api(`/v1/${read}/${path}`);
    if (request !== stateRequest) return;
    $('#state-note').textContent = 'Current state. Its history needs the auditor role.';
    const nodes = type === 'account' ? [balanceLine(view), renderObject(view)] : [renderObject(view)];
    $('#state').replaceChildren(...nodes);
    $('#state').dataset.version = String(view.version);
  }

  /** Opens the stream of the event that caused this one, or says the cause was a request. */
  async function followCause(button) {
    const id = button.dataset.causation;
    let event;
    try {
      event = await api(`/v1/audit/events/${encodeURIComponent(id)}`);
    } catch (error) {
      if (error.status !== 404) throw error;
      showCauseNote(button.closest('li'), `caused by request ${id}, not an event`);
      return;
    }
    await openStream(event.aggregate_type.toLowerCase(), event.aggregate_id, event.event_id);
  }

  function showCauseNote(item, text) {
    const note = item.querySelector('.cause-note') || el('p', { class: 'cause-note', role: 'status' });
    note.textContent = text;
    item.querySelector('.event-meta').after(note);
  }

  /** Lists the events this one caused, each a link to its stream. */
  async function showCaused(button) {
    const item = button.closest('li.event');
    const cause = encodeURIComponent(item.dataset.eventId);
    const events = await allPages(`/v1/audit/events?caused_by=${cause}&limit=${PAGE_LIMIT}`);
    const result = events.length
      ? el('ul', { class: 'caused-result' }, ...events.map((event) => el('li', {}, idLink(
        event.aggregate_type.toLowerCase(), event.aggregate_id,
        `${event.event_type} in ${event.aggregate_type} ${shortId(event.aggregate_id)}`, event.event_id))))
      : el('p', { class: 'caused-result muted', text: 'No recorded event names this one as its cause.' });
    const previous = item.querySelector('.caused-result');
    if (previous) previous.replaceWith(result);
    else item.append(result);
  }

  async function searchBookings() {
    const q = $('#stream-search').value.trim();
    const page = await api(`/v1/search/bookings?${query({ q, limit: '20' })}`);
    const box = $('#search-results');
    if (!page.items.length) {
      box.replaceChildren(el('p', { class: 'muted', text: `No booking matches “${q}”.` }));
      return;
    }
    box.replaceChildren(
      el('ul', { class: 'hits' }, ...page.items.map(searchHit)),
      el('p', { class: 'muted', hidden: !page.next_cursor, text: 'More bookings match: refine the search.' }));
  }

  function searchHit(hit) {
    const guest = hit.guest && (hit.guest.erased || hit.guest.name === ERASED) ? 'erased guest' : (hit.guest && hit.guest.name) || 'guest';
    return el('li', {},
      el('button', {
        type: 'button', class: 'open-stream', data: { type: 'booking', id: hit.booking_id },
        text: `${guest} · ${hit.resource_id} · ${formatTime(hit.starts_at)} · ${hit.status}`,
      }),
      hit.snippet ? snippetNode(hit.snippet) : null);
  }

  /** The search snippet (HTML-escaped text, matches in <b>) as text and <mark>s: never parsed as HTML. */
  function snippetNode(snippet) {
    const out = el('p', { class: 'snippet' });
    let match = false;
    for (const part of snippet.split(/<\/?b>/)) {
      if (part) out.append(match ? el('mark', { text: unescapeHtml(part) }) : unescapeHtml(part));
      match = !match;
    }
    return out;
  }

  function unescapeHtml(text) {
    const named = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" };
    return text.replace(/&(#x[0-9a-f]+|#\d+|[a-z]+);/gi, (entity, code) => {
      if (code[0] !== '#') return named[code.toLowerCase()] ?? entity;
      const point = code[1] === 'x' || code[1] === 'X' ? parseInt(code.slice(2), 16) : parseInt(code.slice(1), 10);
      return point <= 0x10ffff ? String.fromCodePoint(point) : entity;
    });
  }

  function onSliderInput(event) {
    clearTimeout(sliderTimer);
    const index = Number($('#state-slider').value) - 1;
    const select = () => run(() => selectEvent(index, true));
    if (event.type === 'change') select();
    else sliderTimer = setTimeout(select, 150);
  }

  function onTimelineClick(event) {
    const item = event.target.closest('li.event');
    if (!item || event.target.closest('button:not(.event-select)')) return;
    run(() => selectEvent(Number(item.dataset.index), false));
  }

  // ---- Integrity ----

  async function loadIntegrity() {
    integrityLoaded = true;
    const [page, key] = await Promise.all([
      api('/v1/audit/checkpoints?order=desc&limit=1'),
      api('/v1/audit/public-key'),
    ]);
    $('#public-key').replaceChildren(renderObject(key));
    const box = $('#checkpoint-status');
    const latest = page.items[0];
    if (!latest) {
      box.replaceChildren(el('p', { text: 'No checkpoint has been signed yet.' }));
      return;
    }
    const check = await checkSignature(latest, key);
    box.replaceChildren(checkpointFields(latest), el('p', { class: `signature ${check.state}`, text: check.text }));
    setData(box, { treeSize: latest.tree_size, signature: check.state });
  }

  /** The checkpoint as signed: every field verbatim. */
  function checkpointFields(checkpoint) {
    const field = (label, value) => el('div', {}, el('dt', { text: label }), el('dd', {}, el('code', { text: String(value) })));
    return el('dl', { class: 'fields' },
      field('tree size', checkpoint.tree_size),
      field('signed at', checkpoint.signed_at),
      field('root hash', checkpoint.root_hash),
      field('origin', checkpoint.origin),
      field('key id', checkpoint.key_id),
      field('signature', checkpoint.signature));
  }

  function base64Bytes(text) {
    return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  }

  /** Checks the checkpoint's Ed25519 signature over the text of eventstore/src/notary/checkpoint.rs. */
  async function checkSignature(checkpoint, key) {
    if (checkpoint.key_id !== key.key_id) {
      return { state: 'invalid', text: `Signed by key ${checkpoint.key_id}, not by the current key ${key.key_id}.` };
    }
    if (!window.crypto || !window.crypto.subtle) {
      return { state: 'unchecked', text: 'Signature not checked: WebCrypto needs HTTPS or localhost.' };
    }
    const { origin, tree_size: size, root_hash: root, signed_at: at } = checkpoint;
    const message = new TextEncoder().encode(`chronicle checkpoint v1\n${origin}\n${size}\n${root}\n${at}\n`);
    try {
      const publicKey = await crypto.subtle.importKey('raw', base64Bytes(key.public_key), { name: 'Ed25519' }, false, ['verify']);
      const valid = await crypto.subtle.verify({ name: 'Ed25519' }, publicKey, base64Bytes(checkpoint.signature), message);
      return valid
        ? { state: 'valid', text: 'Signature valid: checked in this browser with the public key below.' }
        : { state: 'invalid', text: 'Signature INVALID for this checkpoint and the public key below.' };
    } catch (error) {
      return { state: 'unchecked', text: `Signature not checked: this browser cannot verify Ed25519 (${error.message}).` };
    }
  }

  async function runVerification() {
    const type = $('#verify-type').value;
    const id = $('#verify-id').value.trim();
    const box = $('#verify-outcome');
    box.removeAttribute('data-verified');
    box.replaceChildren(el('p', { class: 'muted', text: 'Verifying…' }));
    try {
      const result = await api(`/v1/audit/${type}/${encodeURIComponent(id)}/verification`);
      renderVerification(result);
      recordVerification(result);
    } catch (error) {
      box.replaceChildren();
      throw error;
    }
  }

  function renderVerification(result) {
    const box = $('#verify-outcome');
    const problems = result.problems || [];
    const headline = result.verified
      ? `Verified: ${result.events} events, chain intact`
      : `Not verified: ${problems.length} problem(s) in ${result.events} events`;
    box.replaceChildren(
      el('p', { class: `headline ${result.verified ? 'ok' : 'bad'}`, text: headline }),
      el('ul', { class: 'problems', hidden: !problems.length }, ...problems.map((problem) => el('li', { text: problem }))),
      el('p', { text: coverageText(result.checkpoint) }),
      el('p', {
        class: 'muted',
        text: `${capitalize(result.aggregate_type.toLowerCase())} ${result.aggregate_id}; last sequence ${result.last_sequence}, `
          + `last position ${result.last_position ?? '—'}; checked ${formatTime(result.checked_at)}.`,
      }));
    box.dataset.verified = String(result.verified);
  }

  /** What the latest signed checkpoint says of the stream (StreamCoverage). */
  function coverageText(checkpoint) {
    if (!checkpoint) return 'No signed checkpoint yet: nothing covers this stream.';
    const signature = checkpoint.signature_valid ? 'signature valid' : 'signature INVALID';
    const later = checkpoint.pending ? `; ${checkpoint.pending} recorded later, not covered yet` : '';
    return `Latest signed checkpoint: ${checkpoint.tree_size} events, signed ${checkpoint.signed_at} (${signature}). `
      + `It covers ${checkpoint.covered} of this stream's events${later}.`;
  }

  function readHistory() {
    try {
      const history = JSON.parse(sessionStorage.getItem(HISTORY_KEY) || '[]');
      return Array.isArray(history) ? history : [];
    } catch {
      return [];
    }
  }

  function recordVerification(result) {
    const entry = {
      type: result.aggregate_type.toLowerCase(), id: result.aggregate_id, verified: result.verified,
      events: result.events, problems: (result.problems || []).length, checked_at: result.checked_at,
      covered: result.checkpoint ? result.checkpoint.covered : 0,
    };
    const history = [entry, ...readHistory()].slice(0, HISTORY_CAP);
    sessionStorage.setItem(HISTORY_KEY, JSON.stringify(history));
    renderHistory();
  }

  function renderHistory() {
    const list = $('#verify-history');
    if (!list) return;
    list.replaceChildren(...readHistory().map((entry) => el('li', { data: { verified: entry.verified } },
      el('span', { class: entry.verified ? 'ok' : 'bad', text: entry.verified ? 'Verified' : 'Failed' }),
      ` ${formatTime(entry.checked_at)} · ${entry.events} events`,
      entry.problems ? ` · ${entry.problems} problem(s)` : '',
      entry.covered ? ` · ${entry.covered} covered by a checkpoint` : '',
      ' · ', idLink(entry.type, entry.id, `${entry.type} ${shortId(entry.id)}`))));
  }

  // ---- Analytics ----

  async function loadRevenue() {
    const params = query({
      from: utcFromInput($('#revenue-from')),
      to: utcFromInput($('#revenue-to')),
      bucket: $('#revenue-bucket').value,
    });
    const result = await api(`/v1/analytics/revenue?${params}`);
    renderRevenueTable(result.buckets);
    drawRevenue(revenueSeries(result));
    $('#revenue-summary').textContent = result.buckets.length
      ? `${result.buckets.length} row(s) from ${formatTime(result.from)} to ${formatTime(result.to)} per ${result.bucket}.`
      : 'No revenue recorded in this range.';
  }

  function renderRevenueTable(buckets) {
    $('#revenue-table tbody').replaceChildren(...buckets.map((row) => el('tr', {
      data: { bucket: row.bucket, currency: row.currency, amount: row.revenue },
    },
    el('td', {}, timeNode(row.bucket)),
    el('td', { text: row.currency }),
    el('td', { class: 'number', text: formatMoney(row.captured, row.currency) }),
    el('td', { class: 'number', text: formatMoney(row.refunded, row.currency) }),
    el('td', { class: 'number', text: formatMoney(row.revenue, row.currency) }))));
  }

  /** Every bucket start from `from` up to `to` (epoch seconds, UTC); null when too many. */
  function bucketStarts(from, to, bucket) {
    const at = new Date(from);
    at.setUTCMinutes(0, 0, 0);
    if (bucket !== 'hour') at.setUTCHours(0);
    if (bucket === 'month') at.setUTCDate(1);
    const end = Date.parse(to);
    const starts = [];
    while (at.getTime() < end) {
      if (starts.length === MAX_BUCKETS) return null;
      starts.push(at.getTime() / 1000);
      if (bucket === 'hour') at.setUTCHours(at.getUTCHours() + 1);
      else if (bucket === 'day') at.setUTCDate(at.getUTCDate() + 1);
      else at.setUTCMonth(at.getUTCMonth() + 1);
    }
    return starts;
  }

  /**
   * x: every bucket start of the range (epoch seconds), so quiet buckets show as 0; one
   * series per currency in major units.
   */
  function revenueSeries(result) {
    const rows = result.buckets;
    const starts = bucketStarts(result.from, result.to, result.bucket) || [];
    const x = [...new Set([...starts, ...rows.map((row) => Date.parse(row.bucket) / 1000)])].sort((a, b) => a - b);
    const currencies = [...new Set(rows.map((row) => row.currency))].sort();
    const series = Object.fromEntries(currencies.map((currency) => [currency, x.map(() => 0)]));
    for (const row of rows) {
      series[row.currency][x.indexOf(Date.parse(row.bucket) / 1000)] = row.revenue / 100;
    }
    return { x, series, range: [Date.parse(result.from) / 1000, Date.parse(result.to) / 1000] };
  }

  function drawRevenue(data) {
    const box = $('#revenue-chart');
    box.removeAttribute('data-drawn');
    if (revenueChart) revenueChart.destroy();
    const currencies = Object.keys(data.series);
    const options = {
      width: chartWidth(box),
      height: CHART_HEIGHT,
      tzDate: (seconds) => uPlot.tzDate(new Date(seconds * 1000), 'Etc/UTC'),
      scales: { x: { time: true, range: () => data.range } },
      series: [
        { label: 'Bucket (UTC)' },
        // One bar per bucket and currency: two currencies stand side by side, more
        // overlap (translucent).
        ...currencies.map((currency, index) => ({
          label: currency,
          stroke: PALETTE[index % PALETTE.length],
          fill: `${PALETTE[index % PALETTE.length]}66`,
          width: 1,
          paths: uPlot.paths.bars({
            size: [currencies.length === 2 ? 0.35 : 0.6, 60],
            align: currencies.length === 2 ? (index === 0 ? -1 : 1) : 0,
          }),
          points: { show: false },
        })),
      ],
      axes: [{}, { label: 'Revenue (major units)', size: 70 }],
    };
    revenueChart = new uPlot(options, [data.x, ...currencies.map((currency) => data.series[currency])], box);
    box.dataset.series = JSON.stringify({ x: data.x, series: data.series });
    box.dataset.drawn = 'true';
  }

  /** The width the chart fits in: its panel's (the chart box itself is hidden until drawn). */
  function chartWidth(box) {
    return Math.max(box.parentElement.clientWidth - 56, 320);
  }

  function onResize() {
    if (revenueChart) revenueChart.setSize({ width: chartWidth($('#revenue-chart')), height: CHART_HEIGHT });
  }

  async function loadOccupancy() {
    const params = query({
      resource_id: $('#occupancy-resource').value.trim(),
      as_of: utcFromInput($('#occupancy-as-of')),
      known_at: utcFromInput($('#occupancy-known-at')),
    });
    const box = $('#occupancy-result');
    box.removeAttribute('data-held');
    const result = await api(`/v1/analytics/occupancy?${params}`);
    const seats = result.seats || [];
    box.replaceChildren(el('p', {}, el('strong', { text: `${result.seats_held} seat(s) held` }),
      ` on ${result.resource_id} at `, timeNode(result.as_of), ', as known at ', timeNode(result.known_at), '.'));
    if (seats.length) box.append(seatTable(seats));
    box.dataset.held = String(result.seats_held);
  }

  function seatTable(seats) {
    return el('table', {},
      el('caption', { text: 'Seats held' }),
      el('thead', {}, el('tr', {},
        el('th', { scope: 'col', text: 'Seat' }), el('th', { scope: 'col', text: 'Booking' }),
        el('th', { scope: 'col', text: 'Status' }))),
      el('tbody', {}, ...seats.map((seat) => el('tr', { data: { seat: seat.seat, bookingId: seat.booking_id } },
        el('td', { text: seat.seat }),
        el('td', {}, canAudit() ? idLink('booking', seat.booking_id) : el('code', { text: seat.booking_id })),
        el('td', { text: seat.status })))));
  }

  // ---- Live feed ----

  function setLiveStatus(state, detail) {
    const status = $('#live-status');
    status.textContent = state;
    status.dataset.state = state;
    if (detail) $('#live-detail').textContent = detail;
  }

  function startLive() {
    if (live.wanted) return;
    live.wanted = true;
    live.delay = 1000;
    connectLive('connecting');
  }

  function stopLive() {
    live.wanted = false;
    clearTimeout(live.timer);
    closeSource();
    setLiveStatus('closed', 'Stopped.');
  }

  function closeSource() {
    if (live.source) live.source.close();
    live.source = null;
  }

  /** A new single-use ticket, then an EventSource from the last event seen. */
  async function connectLive(state) {
    setLiveStatus(state);
    let ticket;
    try {
      ticket = await api('/v1/feed/tickets', { method: 'POST' });
    } catch (error) {
      showError(error);
      const retryable = !error.status || error.status === 429 || error.status >= 500;
      if (retryable) scheduleReconnect();
      else stopLive();
      return;
    }
    if (!live.wanted || live.source) return; // stopped, or started again, meanwhile
    const url = `/v1/feed?ticket=${encodeURIComponent(ticket.ticket)}`
      + (live.lastId ? `&after=${encodeURIComponent(live.lastId)}` : '');
    const source = new EventSource(url);
    let opened = false;
    live.source = source;
    const resumed = live.lastId ? ', resumed after the last event seen' : '';
    source.onopen = () => {
      opened = true;
      live.delay = 1000;
      live.refusals = 0;
      setLiveStatus('open', `Open since ${formatTime(new Date().toISOString())}${resumed}.`);
    };
    source.onerror = () => {
      if (source !== live.source) return;
      closeSource(); // the browser would retry with the spent ticket
      if (!opened) noteRefusal();
      scheduleReconnect();
    };
    source.onmessage = onLiveEvent;
    for (const type of FEED_EVENT_TYPES) source.addEventListener(type, onLiveEvent);
    source.addEventListener('resume', (event) => onResume(source, event));
  }

  function scheduleReconnect() {
    if (!live.wanted) return;
    setLiveStatus('reconnecting');
    clearTimeout(live.timer);
    live.timer = setTimeout(() => connectLive('reconnecting'), live.delay);
    live.delay = Math.min(live.delay * 2, 10000);
  }

  /** A stream refused before it opened; three in a row from one point: the point is gone. */
  function noteRefusal() {
    live.refusals += 1;
    if (live.refusals < 3 || !live.lastId) return;
    live.refusals = 0;
    live.lastId = null;
    showError(new ConsoleError('Live feed could not resume',
      'The feed refused three times to resume after the last event seen (it may be older than the feed keeps). '
      + 'The live list continues from now; events in between are missing from it.'));
  }

  function onResume(source, event) {
    if (source !== live.source) return;
    let notice = {};
    try {
      notice = JSON.parse(event.data);
    } catch {
      // Only the id is needed.
    }
    live.lastId = notice.after || event.lastEventId || live.lastId;
    closeSource();
    const detail = `The server ended the stream (${notice.reason || 'no reason given'}); resuming after the last event.`;
    setLiveStatus('reconnecting', detail);
    if (notice.reason === 'slow') connectLive('reconnecting');
    else scheduleReconnect();
  }

  function onLiveEvent(event) {
    if (event.lastEventId) live.lastId = event.lastEventId;
    let envelope = {};
    try {
      envelope = JSON.parse(event.data);
    } catch {
      // Shown with its type only.
    }
    const type = event.type === 'message' ? envelope.event_type || 'message' : event.type;
    const list = $('#live-events');
    list.prepend(liveItem(type, envelope));
    while (list.children.length > LIVE_CAP) list.lastElementChild.remove();
  }

  function liveItem(type, envelope) {
    const aggregateType = String(envelope.aggregate_type || '');
    const aggregateId = envelope.aggregate_id;
    const streamType = aggregateType.toLowerCase();
    const target = ID_KEYS[`${streamType}_id`] && aggregateId
      ? idLink(streamType, aggregateId, `${aggregateType} ${shortId(aggregateId)}`, envelope.event_id)
      : el('span', { text: `${aggregateType} ${aggregateId || ''}` });
    return el('li', {
      class: 'live-event',
      data: { type, aggregateType, aggregateId, position: envelope.global_position },
    },
    el('span', { class: 'event-type', text: type }),
    target,
    envelope.recorded_at ? timeNode(envelope.recorded_at) : null,
    el('span', { class: 'muted', text: `position ${envelope.global_position ?? '—'}` }));
  }

  // ---- Wiring ----

  function onSubmit(selector, action) {
    const form = $(selector);
    if (!form) return;
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      run(action);
    });
  }

  function onDocumentClick(event) {
    const button = event.target.closest('button');
    if (!button) return;
    if (button.matches('.id-link, .open-stream')) {
      run(() => openStream(button.dataset.type, button.dataset.id, button.dataset.select));
    } else if (button.matches('.causation')) {
      run(() => followCause(button));
    } else if (button.matches('.caused')) {
      run(() => showCaused(button));
    }
  }

  function setAnalyticsDefaults() {
    const today = new Date();
    today.setUTCHours(0, 0, 0, 0);
    const day = 24 * 3600 * 1000;
    $('#revenue-from').value = new Date(today.getTime() - 30 * day).toISOString().slice(0, 10);
    $('#revenue-to').value = new Date(today.getTime() + day).toISOString().slice(0, 10);
  }

  function init() {
    onSubmit('#sign-in-form', async () => signIn($('#token').value.trim()));
    onSubmit('#stream-form', () => openStream($('#stream-type').value, $('#stream-id').value.trim()));
    onSubmit('#search-form', searchBookings);
    onSubmit('#verify-form', runVerification);
    onSubmit('#revenue-form', loadRevenue);
    onSubmit('#occupancy-form', loadOccupancy);
    $('#sign-out').addEventListener('click', signOut);
    $('#error .dismiss').addEventListener('click', clearError);
    $('#checkpoint-refresh').addEventListener('click', () => run(loadIntegrity));
    $('#state-slider').addEventListener('input', onSliderInput);
    $('#state-slider').addEventListener('change', onSliderInput);
    $('#timeline').addEventListener('click', onTimelineClick);
    $('#live-start').addEventListener('click', startLive);
    $('#live-stop').addEventListener('click', stopLive);
    document.addEventListener('click', onDocumentClick);
    window.addEventListener('hashchange', () => route(true));
    window.addEventListener('resize', onResize);
    setAnalyticsDefaults();
    renderHistory();

    const stored = sessionStorage.getItem(TOKEN_KEY);
    if (!stored) return;
    try {
      signIn(stored);
    } catch (error) {
      sessionStorage.removeItem(TOKEN_KEY);
      showError(error);
    }
  }

  init();
}());
