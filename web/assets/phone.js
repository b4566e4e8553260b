// The phone send page (web/pages/phone.html, /m/{room}): what the event wall's QR code opens.
//
// It sends over HTTP (POST /api/v1/rooms/{room}/danmaku, through DM.Room with no connection
// open), not over a WebSocket: a phone here only sends, now and then, with its screen going
// to sleep in between. A request per send gets one definite answer and needs no reconnects,
// and the phone does not count as a viewer in the wall's online count.
'use strict';
(function () {
  const $ = (id) => document.getElementById(id);
  const NAME_KEY = 'danmaku.phone.name';

  // A broken escape gives '': the server refuses it, and the page says so on send.
  const roomName = DM.pageRoom();
  $('room').textContent = roomName;
  const room = new DM.Room(roomName, {});

  const form = $('form');
  const text = $('text');
  const name = $('name');
  const sendButton = $('send');
  const status = $('status');

  // The nickname stays on the phone for the next send and the next visit.
  const storage = (() => {
    try {
      return window.localStorage;
    } catch (_) {
      return null; // storage blocked: the nickname lasts as long as the page
    }
  })();
  if (storage) name.value = storage.getItem(NAME_KEY) || '';
  name.addEventListener('change', () => {
    if (!storage) return;
    const value = name.value.trim();
    if (value) storage.setItem(NAME_KEY, value);
    else storage.removeItem(NAME_KEY);
  });

  // The custom swatch takes the colour picker's colour and is selected by picking one.
  const customRadio = $('custom-radio');
  const custom = $('custom');
  custom.addEventListener('input', () => {
    customRadio.value = custom.value;
    $('custom-swatch').style.setProperty('--swatch', custom.value);
    customRadio.checked = true;
  });

  function say(kind, words) {
    status.className = 'phone-status ' + kind;
    status.textContent = words;
  }

  let sending = false;
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (sending) return;
    if (!text.value.trim()) {
      say('err', DM.describeError('empty_text'));
      text.focus();
      return;
    }
    sending = true;
    sendButton.disabled = true;
    say('', 'Sending…');
    try {
      const result = await room.send({
        text: text.value,
        color: form.elements.color.value,
        mode: form.elements.mode.value,
        name: name.value.trim(),
      });
      // Cleared only once the server took it; a refusal keeps the text to fix and resend.
      text.value = '';
      if (result.held != null) say('held', DM.describeError('held'));
      else say('ok', 'Sent ✓');
    } catch (e) {
      say('err', e instanceof DM.SendError ? e.words : DM.describeError('network'));
    } finally {
      sending = false;
      sendButton.disabled = false;
      text.focus();
    }
  });
})();
