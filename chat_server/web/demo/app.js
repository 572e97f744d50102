// The chat_server demo page: sign in (demo only), rooms over REST, messages over STOMP.
//
// Exactly-once display across reconnects:
// - every room remembers the highest `seq` it has shown (lastSeq); after any reconnect each room is
//   subscribed again with `x-resume-after:<lastSeq>`, so the server replays what was missed and
//   then goes live, with no gap and no duplicate at the seam;
// - messages are also deduplicated here by `seq`, whatever the server does;
// - a SEND carries a clientMessageId and a receipt; SENDs without a receipt when the connection
//   drops are sent again after the reconnect with the same clientMessageId (the server stores a
//   retried clientMessageId once).
// Everything from the server is rendered with textContent, never as HTML.
//
// Room state: the open room's events (/queue/chat-rooms/{id}/events) give who is online (a dot
// by each member), who is typing, and every member's read marker ("seen by bob" under the last
// message bob read). Unread badges start from the server's unreadCount and clear on every device
// at once: reading sends /app/read, and the server tells the user's other connections.
//
// Narrow screens (phones) show one pane at a time: the room list, or the open room with a way
// back to the list.
"use strict";

(function () {
  const HEARTBEAT_MS = 10000;
  const PAGE_SIZE = 30;
  const BACKOFF_FIRST_MS = 500;
  const BACKOFF_MAX_MS = 15000;
  const STORAGE_KEY = "chat-demo-session";
  // While keys keep coming, "typing" is said again this often (the server forgets it after 5 s).
  const TYPING_REFRESH_MS = 3000;
  const NARROW = window.matchMedia("(max-width: 700px)");

  const $ = (id) => document.getElementById(id);

  const state = {
    token: null,
    userId: null,
    conn: null,
    status: "offline",
    attempt: 0,
    reconnectTimer: null,
    holdUntil: 0, // set by chatDemo.dropConnection(holdMs): no reconnect before this time
    connects: 0,
    rooms: new Map(), // room id -> RoomState
    currentRoomId: null,
    pending: new Map(), // clientMessageId -> {roomId, content, receipted, conn, element}
    typingSent: null, // {roomId, at} while this page has told the server we are typing
  };

  // ---- small helpers -------------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function randomId() {
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function formatTime(iso) {
    const when = new Date(iso);
    const time = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    if (when.toDateString() === new Date().toDateString()) return time;
    return when.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + time;
  }

  let toastTimer = null;
  function toast(text) {
    const box = $("toast");
    box.textContent = text;
    box.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { box.hidden = true; }, 4000);
  }

  function roomLabel(room) {
    if (room.kind === "group") return room.name;
    return room.memberIds.find((id) => id !== state.userId) || state.userId;
  }

  async function api(method, path, body) {
    const response = await fetch(path, {
      method,
      headers: {
        Authorization: "Bearer " + state.token,
        ...(body === undefined ? {} : { "Content-Type": "application/json" }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = response.status === 204 ? {} : await response.json();
    if (response.status === 401) {
      signOut("Your demo session expired: sign in again.");
      throw new Error("unauthorized");
    }
    return { status: response.status, data };
  }

  // ---- sign in / out (DEMO ONLY: the server mints a token for any name) -----------------------

  async function signIn(name) {
    const response = await fetch("/demo/sign-in", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ userId: name }),
    });
    const data = await response.json();
    if (!response.ok) throw new Error(data.error ? data.error.message : "sign-in failed");
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify({ token: data.token, userId: data.userId }));
    startSession(data.token, data.userId);
  }

  function startSession(token, userId) {
    state.token = token;
    state.userId = userId;
    $("me").textContent = userId;
    $("signin-view").hidden = true;
    $("chat-view").hidden = false;
    $("session").hidden = false;
    refreshRooms();
    connect();
  }

  function signOut(message) {
    sessionStorage.removeItem(STORAGE_KEY);
    clearTimeout(state.reconnectTimer);
    const conn = state.conn;
    state.token = null;
    state.userId = null;
    state.conn = null;
    if (conn) conn.disconnect();
    state.rooms.clear();
    state.pending.clear();
    state.currentRoomId = null;
    $("room-list").replaceChildren();
    $("message-list").replaceChildren();
    $("pending-list").replaceChildren();
    $("room-title").textContent = "Pick a room";
    $("room-members").replaceChildren();
    $("typing").textContent = "";
    $("chat-view").hidden = true;
    $("session").hidden = true;
    $("signin-view").hidden = false;
    $("signin-error").textContent = message || "";
    setComposerEnabled(false);
  }

  // ---- connection: connect, resume, reconnect with backoff ----------------------------------

  function setStatus(status, text) {
    state.status = status;
    const badge = $("status");
    badge.dataset.state = status;
    badge.textContent = text || status;
  }

  function connect() {
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = null;
    if (!state.token || state.conn) return;
    setStatus("connecting", "connecting…");
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const conn = new Stomp.StompConnection(`${scheme}//${location.host}/ws`, {
      token: state.token,
      heartbeatMs: HEARTBEAT_MS,
      onConnected: () => onConnected(conn),
      onClose: (reason) => onClosed(conn, reason),
      onError: (frame) => onStompError(frame),
    });
    state.conn = conn;
  }

  function onConnected(conn) {
    if (state.conn !== conn) return;
    state.attempt = 0;
    state.connects += 1;
    setStatus("connected", "connected");
    conn.subscribe("/user/queue/notifications", {}, (frame) => onNotification(JSON.parse(frame.body)));
    conn.subscribe("/user/queue/errors", {}, (frame) => onRefusal(JSON.parse(frame.body)));
    // Rooms may have come and gone while we were away (their notifications never reached us):
    // list them first, since subscribing to a room we were removed from would be refused.
    refreshRooms().finally(() => {
      if (state.conn !== conn) return;
      for (const room of state.rooms.values()) {
        if (room.loaded) subscribeRoom(room);
        else if (!room.loading) loadLatest(room);
      }
      watchCurrentRoom();
      flushPending();
    });
  }

  function onClosed(conn, reason) {
    if (state.conn !== conn) return;
    state.conn = null;
    state.typingSent = null;
    for (const room of state.rooms.values()) {
      room.subscription = null;
      room.events = null;
      room.online.clear(); // who is online is unknown while we are not
      room.typing.clear();
    }
    renderRoomState();
    for (const pending of state.pending.values()) pending.conn = null;
    if (!state.token) return;
    scheduleReconnect(reason);
  }

  function scheduleReconnect(reason) {
    const backoff = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** state.attempt);
    const jittered = backoff / 2 + Math.random() * (backoff / 2);
    const delay = Math.max(jittered, state.holdUntil - Date.now());
    state.attempt += 1;
    const seconds = Math.max(1, Math.round(delay / 1000));
    setStatus("offline", `offline: retrying in ${seconds} s`);
    console.info("chat demo: connection lost (%s); reconnecting in %d ms", reason, Math.round(delay));
    state.reconnectTimer = setTimeout(connect, delay);
  }

  function onStompError(frame) {
    const message = frame.headers.message || "error";
    if (/auth/i.test(message)) {
      signOut("Your demo session is no longer valid: sign in again.");
    } else {
      toast("Server: " + message);
    }
  }

  // ---- rooms ---------------------------------------------------------------------------------

  async function refreshRooms() {
    const started = Date.now();
    let result;
    try {
      result = await api("GET", "/api/chat-rooms");
    } catch (_) {
      return; // offline or signed out: the next connect refreshes again
    }
    if (result.status !== 200) return;
    const listed = new Set(result.data.rooms.map((room) => room.id));
    for (const [roomId, room] of state.rooms) {
      if (!listed.has(roomId) && room.addedAt < started) removeRoom(roomId);
    }
    for (const room of result.data.rooms) addRoom(room);
    if (state.currentRoomId === null && result.data.rooms.length > 0 && !NARROW.matches) {
      selectRoom(result.data.rooms[0].id);
    }
  }

  function addRoom(room) {
    const existing = state.rooms.get(room.id);
    if (existing) {
      existing.room = room;
      // The server counts what this page may not have loaded; it is the record.
      existing.lastReadSeq = Math.max(existing.lastReadSeq, room.lastReadSeq || 0);
      existing.unread = room.unreadCount || 0;
      if (isReading(existing)) markRead(existing);
      renderRoomList();
      return existing;
    }
    const roomState = {
      room,
      messages: new Map(), // seq -> message
      lastSeq: 0, // the highest seq shown: what a resume starts after
      oldestSeq: null,
      historyDone: false,
      addedAt: Date.now(),
      loaded: false,
      loading: false,
      loadingOlder: false,
      subscription: null,
      unread: room.unreadCount || 0, // from the server; counted here while live
      lastReadSeq: room.lastReadSeq || 0, // this user's read marker
      events: null, // the events subscription, while the room is open
      online: new Set(),
      typing: new Set(),
      reads: new Map(), // member -> last seq they read
    };
    state.rooms.set(room.id, roomState);
    renderRoomList();
    loadLatest(roomState);
    return roomState;
  }

  function removeRoom(roomId) {
    const room = state.rooms.get(roomId);
    if (!room) return;
    if (room.subscription && state.conn) state.conn.unsubscribe(room.subscription);
    if (room.events && state.conn) state.conn.unsubscribe(room.events);
    state.rooms.delete(roomId);
    if (state.currentRoomId === roomId) {
      state.currentRoomId = null;
      renderConversation();
    }
    renderRoomList();
  }

  // The newest page first, then subscribe after its last seq: nothing between the two is lost.
  async function loadLatest(room) {
    let result;
    room.loading = true;
    try {
      result = await api("GET", `/api/chat-rooms/${room.room.id}/messages?limit=${PAGE_SIZE}`);
    } catch (_) {
      return; // offline: the next CONNECTED loads it again
    } finally {
      room.loading = false;
    }
    if (result.status !== 200 || state.rooms.get(room.room.id) !== room) return;
    const messages = result.data.messages;
    room.historyDone = messages.length < PAGE_SIZE;
    for (const message of messages) accept(room, message, false);
    room.loaded = true;
    subscribeRoom(room);
    if (isReading(room)) markRead(room);
    if (state.currentRoomId === room.room.id) renderConversation();
  }

  function subscribeRoom(room) {
    const conn = state.conn;
    if (!conn || !conn.connected || !room.loaded || room.subscription) return;
    room.subscription = conn.subscribe(
      `/queue/chat-rooms/${room.room.id}`,
      { "x-resume-after": String(room.lastSeq) },
      (frame) => accept(room, JSON.parse(frame.body), true),
    );
  }

  // One message into a room: once per seq, whatever path it came by.
  function accept(room, message, live) {
    const pending = message.clientMessageId && state.pending.get(message.clientMessageId);
    if (pending && message.senderId === state.userId) {
      state.pending.delete(message.clientMessageId);
      if (pending.element) pending.element.remove();
    }
    if (room.messages.has(message.seq)) return;
    room.messages.set(message.seq, message);
    if (room.oldestSeq === null || message.seq < room.oldestSeq) room.oldestSeq = message.seq;
    if (message.seq > room.lastSeq) {
      room.lastSeq = message.seq;
      room.room.lastActivityAt = message.createdAt;
    }
    // Whoever sends a message has read the room up to it (the server moved their marker).
    noteRead(room, message.senderId, message.seq);
    if (message.senderId === state.userId) {
      room.lastReadSeq = Math.max(room.lastReadSeq, message.seq);
    } else if (live) {
      room.typing.delete(message.senderId); // the server says so too, a moment later
      if (isReading(room)) markRead(room);
      else if (message.seq > room.lastReadSeq) room.unread += 1;
    }
    if (state.currentRoomId === room.room.id) {
      insertMessage(message);
      renderRoomState();
    }
    if (live) renderRoomList();
  }

  // ---- room state: presence, typing, read markers --------------------------------------------

  // The open room is being read while its conversation is on screen and the page is visible.
  function isReading(room) {
    return state.currentRoomId === room.room.id && !document.hidden && room.loaded;
  }

  function noteRead(room, userId, seq) {
    if (seq > (room.reads.get(userId) || 0)) room.reads.set(userId, seq);
  }

  // Tell the server this user has read the room to its end: every device's badge clears.
  function markRead(room) {
    room.unread = 0;
    const seq = room.lastSeq;
    if (seq <= room.lastReadSeq) return;
    room.lastReadSeq = seq;
    const body = JSON.stringify({ chatRoomId: room.room.id, seq });
    if (state.conn && state.conn.connected) {
      state.conn.send("/app/read", {}, body, () => {});
    } else {
      api("POST", `/api/chat-rooms/${room.room.id}/read`, { seq }).catch(() => {});
    }
  }

  // Another device of ours read a room: its badge here follows.
  function onReadElsewhere(roomId, seq) {
    const room = state.rooms.get(roomId);
    if (!room || seq <= room.lastReadSeq) return;
    room.lastReadSeq = seq;
    if (seq >= room.lastSeq) {
      room.unread = 0;
    } else if (room.oldestSeq !== null && room.oldestSeq <= seq + 1) {
      room.unread = [...room.messages.values()]
        .filter((m) => m.seq > seq && m.senderId !== state.userId).length;
    } else {
      refreshRooms(); // not all of it is loaded here: ask the server for the count
    }
    renderRoomList();
  }

  function watchCurrentRoom() {
    const room = state.rooms.get(state.currentRoomId);
    const conn = state.conn;
    if (!room || room.events || !conn || !conn.connected) return;
    room.events = conn.subscribe(`/queue/chat-rooms/${room.room.id}/events`, {},
      (frame) => onRoomEvent(room, JSON.parse(frame.body)));
  }

  function unwatchRoom(room) {
    if (!room || !room.events) return;
    if (state.conn) state.conn.unsubscribe(room.events);
    room.events = null;
    room.online.clear();
    room.typing.clear();
  }

  function onRoomEvent(room, event) {
    switch (event.type) {
      case "state":
        room.online = new Set(event.online);
        room.typing = new Set(event.typing);
        for (const [userId, seq] of Object.entries(event.reads)) noteRead(room, userId, seq);
        break;
      case "join":
        room.online.add(event.userId);
        break;
      case "leave":
        room.online.delete(event.userId);
        room.typing.delete(event.userId);
        break;
      case "typing":
        if (event.typing) room.typing.add(event.userId);
        else room.typing.delete(event.userId);
        break;
      case "read":
        noteRead(room, event.userId, event.seq);
        break;
      default:
        return;
    }
    if (state.currentRoomId === room.room.id) renderRoomState();
  }

  // What this page tells the server about its user's typing (the server rate-limits it anyway).
  function typingChanged() {
    const conn = state.conn;
    const roomId = state.currentRoomId;
    if (!conn || !conn.connected || roomId === null) return;
    const typing = $("composer-input").value.trim() !== "";
    const sent = state.typingSent;
    if (typing && sent && sent.roomId === roomId && Date.now() - sent.at < TYPING_REFRESH_MS) return;
    if (!typing && !sent) return;
    if (sent && sent.roomId !== roomId) sendTyping(sent.roomId, false);
    sendTyping(roomId, typing);
    state.typingSent = typing ? { roomId, at: Date.now() } : null;
  }

  function stopTyping() {
    const sent = state.typingSent;
    state.typingSent = null;
    if (sent && state.conn && state.conn.connected) sendTyping(sent.roomId, false);
  }

  function sendTyping(roomId, typing) {
    state.conn.send("/app/typing", {}, JSON.stringify({ chatRoomId: roomId, typing }), () => {});
  }

  function onNotification(event) {
    if (event.type === "room_added" && event.room) {
      const known = state.rooms.has(event.room.id);
      addRoom(event.room);
      if (!known) toast(`You were added to ${roomLabel(event.room)}`);
    } else if (event.type === "room_removed") {
      removeRoom(event.roomId);
    } else if (event.type === "read") {
      onReadElsewhere(event.roomId, event.seq);
    }
  }

  function onRefusal(event) {
    const pending = event.clientMessageId && state.pending.get(event.clientMessageId);
    const reason = event.error ? event.error.message : "refused";
    if (pending) {
      state.pending.delete(event.clientMessageId);
      if (pending.element) {
        pending.element.classList.remove("pending");
        pending.element.classList.add("failed");
        pending.element.querySelector(".meta").textContent = "not sent: " + reason;
      }
    }
    toast("Message not sent: " + reason);
  }

  async function createDirect(participantId) {
    const result = await api("POST", "/api/chat-rooms", { participantId });
    if (result.status === 201) {
      selectRoom(addRoom(result.data).room.id);
    } else if (result.status === 409 && result.data.error.details) {
      const roomId = result.data.error.details.roomId;
      if (!state.rooms.has(roomId)) await refreshRooms();
      selectRoom(roomId);
    } else {
      throw new Error(result.data.error ? result.data.error.message : "could not create the room");
    }
  }

  async function createGroup(name, memberIds) {
    const result = await api("POST", "/api/chat-rooms", { name, memberIds });
    if (result.status !== 201) {
      throw new Error(result.data.error ? result.data.error.message : "could not create the room");
    }
    selectRoom(addRoom(result.data).room.id);
  }

  // ---- history on scroll ---------------------------------------------------------------------

  async function loadOlder(room) {
    if (room.loadingOlder || room.historyDone || !room.loaded || room.oldestSeq === null) return;
    room.loadingOlder = true;
    renderHistoryStatus();
    try {
      const path = `/api/chat-rooms/${room.room.id}/messages?before=${room.oldestSeq}&limit=${PAGE_SIZE}`;
      const result = await api("GET", path);
      if (result.status !== 200) return;
      const box = $("messages");
      const fromBottom = box.scrollHeight - box.scrollTop;
      room.historyDone = result.data.messages.length < PAGE_SIZE;
      for (const message of result.data.messages) accept(room, message, false);
      if (state.currentRoomId === room.room.id) box.scrollTop = box.scrollHeight - fromBottom;
    } finally {
      room.loadingOlder = false;
      renderHistoryStatus();
    }
    fillViewport();
  }

  // Until the list can scroll, scrolling up cannot ask for more: load it now.
  function fillViewport() {
    const room = state.rooms.get(state.currentRoomId);
    const box = $("messages");
    if (room && box.scrollHeight <= box.clientHeight + 40) loadOlder(room).catch(() => {});
  }

  // ---- sending -------------------------------------------------------------------------------

  function sendMessage(content) {
    state.typingSent = null; // storing the message ends our typing, on the server's side
    const roomId = state.currentRoomId;
    const clientMessageId = randomId();
    const pending = { roomId, content, receipted: false, conn: null, element: null };
    state.pending.set(clientMessageId, pending);
    pending.element = pendingElement(content);
    $("pending-list").append(pending.element);
    scrollToBottom();
    flushPending();
  }

  // Every SEND not yet receipted on the current connection goes (again), with its own id.
  function flushPending() {
    const conn = state.conn;
    if (!conn || !conn.connected) return;
    for (const [clientMessageId, pending] of state.pending) {
      if (pending.receipted || pending.conn === conn) continue;
      pending.conn = conn;
      const body = JSON.stringify({ chatRoomId: pending.roomId, content: pending.content, clientMessageId });
      conn.send("/app/message", {}, body, () => {
        pending.receipted = true;
        if (pending.element) pending.element.querySelector(".meta").textContent = "stored";
      });
    }
  }

  // ---- rendering -----------------------------------------------------------------------------

  function renderRoomList() {
    const list = $("room-list");
    const rooms = [...state.rooms.values()].sort((a, b) =>
      (b.room.lastActivityAt || b.room.createdAt).localeCompare(a.room.lastActivityAt || a.room.createdAt));
    list.replaceChildren(...rooms.map((room) => {
      const item = el("li");
      item.dataset.roomId = String(room.room.id);
      if (room.room.id === state.currentRoomId) item.classList.add("active");
      const text = el("div");
      text.append(el("div", "room-name", roomLabel(room.room)));
      const kind = room.room.kind === "group" ? `group · ${room.room.memberIds.length} members` : "direct";
      text.append(el("div", "room-kind", kind));
      item.append(text);
      if (room.unread > 0) {
        const badge = el("span", "unread", String(room.unread));
        badge.title = `${room.unread} unread`;
        item.append(badge);
      }
      item.addEventListener("click", () => selectRoom(room.room.id));
      return item;
    }));
    $("no-rooms").hidden = rooms.length > 0;
  }

  function selectRoom(roomId) {
    const room = state.rooms.get(roomId);
    if (!room) return;
    if (state.currentRoomId !== roomId) {
      stopTyping();
      unwatchRoom(state.rooms.get(state.currentRoomId));
    }
    state.currentRoomId = roomId;
    watchCurrentRoom();
    if (room.loaded) markRead(room);
    renderRoomList();
    renderConversation();
    if (!NARROW.matches) $("composer-input").focus();
  }

  // Phones: back from the open room to the list (the room is no longer being read).
  function leaveRoom() {
    stopTyping();
    unwatchRoom(state.rooms.get(state.currentRoomId));
    state.currentRoomId = null;
    renderRoomList();
    renderConversation();
  }

  function setComposerEnabled(enabled) {
    $("composer-input").disabled = !enabled;
    $("composer-send").disabled = !enabled;
  }

  function renderConversation() {
    const room = state.rooms.get(state.currentRoomId);
    $("chat-view").classList.toggle("in-room", Boolean(room));
    $("message-list").replaceChildren();
    $("pending-list").replaceChildren();
    if (!room) {
      $("room-title").textContent = "Pick a room";
      $("room-members").replaceChildren();
      $("typing").textContent = "";
      $("history-status").textContent = "";
      setComposerEnabled(false);
      return;
    }
    $("room-title").textContent = roomLabel(room.room);
    const seqs = [...room.messages.keys()].sort((a, b) => a - b);
    $("message-list").append(...seqs.map((seq) => messageElement(room.messages.get(seq))));
    for (const pending of state.pending.values()) {
      if (pending.roomId === room.room.id && pending.element) $("pending-list").append(pending.element);
    }
    setComposerEnabled(true);
    renderHistoryStatus();
    renderRoomState();
    scrollToBottom();
    fillViewport();
  }

  // Members with their online dots, who is typing, and "seen by" marks: the open room's state.
  function renderRoomState() {
    const room = state.rooms.get(state.currentRoomId);
    if (!room) return;
    $("room-members").replaceChildren(...room.room.memberIds.map((userId) => {
      const online = room.online.has(userId);
      const member = el("span", online ? "member online" : "member");
      member.dataset.user = userId;
      member.title = online ? `${userId} is online` : `${userId} is offline`;
      member.append(el("span", "dot"), el("span", "member-name", userId));
      return member;
    }));
    const typists = [...room.typing].filter((userId) => userId !== state.userId).sort();
    $("typing").textContent = typists.length === 0 ? ""
      : typists.length === 1 ? `${typists[0]} is typing…`
      : `${typists.slice(0, -1).join(", ")} and ${typists[typists.length - 1]} are typing…`;
    renderSeen(room);
  }

  // "Seen by bob" under the last message bob read that someone else wrote.
  function renderSeen(room) {
    const list = $("message-list");
    for (const mark of list.querySelectorAll(".seen")) mark.remove();
    const readersBySeq = new Map();
    const seqs = [...room.messages.keys()].sort((a, b) => a - b);
    for (const [userId, marker] of room.reads) {
      if (userId === state.userId || marker <= 0) continue;
      let target = null;
      for (const seq of seqs) {
        if (seq > marker) break;
        if (room.messages.get(seq).senderId !== userId) target = seq;
      }
      if (target === null) continue;
      if (!readersBySeq.has(target)) readersBySeq.set(target, []);
      readersBySeq.get(target).push(userId);
    }
    for (const [seq, readers] of readersBySeq) {
      const item = list.querySelector(`.message[data-seq="${seq}"]`);
      if (item) item.append(el("div", "seen", "Seen by " + readers.sort().join(", ")));
    }
  }

  function renderHistoryStatus() {
    const room = state.rooms.get(state.currentRoomId);
    let text = "";
    if (room && !room.loaded) text = "Loading…";
    else if (room && room.loadingOlder) text = "Loading earlier messages…";
    else if (room && room.historyDone) text = room.messages.size ? "Start of the conversation" : "No messages yet: say hello";
    else if (room) text = "Scroll up for earlier messages";
    $("history-status").textContent = text;
  }

  function messageElement(message) {
    const item = el("li", "message");
    item.dataset.seq = String(message.seq);
    if (message.senderId === state.userId) item.classList.add("mine");
    const meta = el("div", "meta");
    meta.append(el("span", "sender", message.senderId));
    const time = el("time", "time", formatTime(message.createdAt));
    time.dateTime = message.createdAt;
    time.title = new Date(message.createdAt).toLocaleString();
    meta.append(time);
    item.append(meta, el("div", "content", message.content));
    return item;
  }

  function pendingElement(content) {
    const item = el("li", "message mine pending");
    item.append(el("div", "meta", "sending…"), el("div", "content", content));
    return item;
  }

  function nearBottom() {
    const box = $("messages");
    return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  }

  function scrollToBottom() {
    const box = $("messages");
    box.scrollTop = box.scrollHeight;
  }

  // Into its place by seq (usually the end); keeps the view pinned to the bottom if it was.
  function insertMessage(message) {
    const list = $("message-list");
    const stick = nearBottom();
    const item = messageElement(message);
    let before = null;
    for (let node = list.lastElementChild; node; node = node.previousElementSibling) {
      if (Number(node.dataset.seq) < message.seq) break;
      before = node;
    }
    list.insertBefore(item, before);
    if (stick) scrollToBottom();
    renderHistoryStatus();
  }

  // ---- wiring --------------------------------------------------------------------------------

  function onSubmit(formId, handler) {
    $(formId).addEventListener("submit", (event) => {
      event.preventDefault();
      handler();
    });
  }

  onSubmit("signin-form", () => {
    const name = $("signin-name").value.trim();
    if (!name) {
      $("signin-error").textContent = "Enter a name.";
      return;
    }
    signIn(name).catch((error) => { $("signin-error").textContent = error.message; });
  });

  onSubmit("new-direct-form", () => {
    const participant = $("new-direct-id").value.trim();
    if (!participant) return;
    $("room-error").textContent = "";
    createDirect(participant)
      .then(() => { $("new-direct-id").value = ""; })
      .catch((error) => { $("room-error").textContent = error.message; });
  });

  onSubmit("new-group-form", () => {
    const name = $("new-group-name").value.trim();
    const members = $("new-group-members").value.split(",").map((m) => m.trim()).filter(Boolean);
    if (!name) return;
    $("room-error").textContent = "";
    createGroup(name, members)
      .then(() => { $("new-group-name").value = ""; $("new-group-members").value = ""; })
      .catch((error) => { $("room-error").textContent = error.message; });
  });

  onSubmit("composer", () => {
    const input = $("composer-input");
    const content = input.value;
    if (!content.trim() || state.currentRoomId === null) return;
    input.value = "";
    sendMessage(content);
  });

  $("sign-out").addEventListener("click", () => signOut(""));
  $("back").addEventListener("click", leaveRoom);
  $("composer-input").addEventListener("input", typingChanged);
  $("composer-input").addEventListener("blur", stopTyping);
  document.addEventListener("visibilitychange", () => {
    const room = state.rooms.get(state.currentRoomId);
    if (room && isReading(room)) markRead(room);
  });
  $("messages").addEventListener("scroll", () => {
    const room = state.rooms.get(state.currentRoomId);
    if (room && $("messages").scrollTop < 60) loadOlder(room).catch(() => {});
  });
  window.addEventListener("online", () => { if (state.reconnectTimer) connect(); });

  // For tests and for trying it by hand: lose the connection the way a network would (no
  // DISCONNECT), and stay offline at least holdMs before the page's own backoff reconnects.
  window.chatDemo = {
    dropConnection(holdMs = 0) {
      state.holdUntil = Date.now() + holdMs;
      if (state.conn) state.conn.drop("dropped by chatDemo.dropConnection()");
    },
    info() {
      return {
        status: state.status,
        connects: state.connects,
        pending: state.pending.size,
        lastSeq: Object.fromEntries([...state.rooms].map(([id, room]) => [id, room.lastSeq])),
        unread: Object.fromEntries([...state.rooms].map(([id, room]) => [id, room.unread])),
      };
    },
  };

  const saved = sessionStorage.getItem(STORAGE_KEY);
  if (saved) {
    const session = JSON.parse(saved);
    startSession(session.token, session.userId);
  }
})();
