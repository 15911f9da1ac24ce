// Getting an agent's attention while the console tab is in the background: a short
// WebAudio beep and, when allowed, a desktop Notification.

let audio = null;

/** Create/resume the AudioContext; call from a user gesture (click, keydown) so it may play later. */
export function unlockAudio() {
  try {
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return;
    if (!audio) audio = new Ctx();
    if (audio.state === 'suspended') audio.resume().catch(() => {});
  } catch {
    audio = null;
  }
}

/** Two short sine tones. Silent if audio was never unlocked. */
export function beep() {
  try {
    if (!audio) unlockAudio();
    if (!audio) return false;
    const now = audio.currentTime;
    for (const [i, freq] of [880, 1175].entries()) {
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      osc.type = 'sine';
      osc.frequency.value = freq;
      const start = now + i * 0.16;
      gain.gain.setValueAtTime(0.0001, start);
      gain.gain.exponentialRampToValueAtTime(0.18, start + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, start + 0.14);
      osc.connect(gain).connect(audio.destination);
      osc.start(start);
      osc.stop(start + 0.15);
    }
    window.__parleyBeeps = (window.__parleyBeeps || 0) + 1;
    return true;
  } catch {
    return false;
  }
}

export function notificationsSupported() {
  return typeof Notification !== 'undefined';
}

export function notificationPermission() {
  return notificationsSupported() ? Notification.permission : 'denied';
}

export async function requestNotifications() {
  if (!notificationsSupported()) return 'denied';
  try {
    return await Notification.requestPermission();
  } catch {
    return Notification.permission;
  }
}

/** Beep and show a desktop notification, but only when the tab is not being looked at. */
export function alertAgent(title, body, { tag, onClick } = {}) {
  if (document.visibilityState === 'visible' && document.hasFocus()) return false;
  beep();
  if (notificationPermission() === 'granted') {
    try {
      const n = new Notification(title, { body, tag, renotify: !!tag });
      n.onclick = () => {
        window.focus();
        onClick?.();
        n.close();
      };
    } catch {}
  }
  window.__parleyAlerts = (window.__parleyAlerts || 0) + 1;
  return true;
}
