// The console's top bar: connection state, own availability toggle (online/away),
// desktop notifications switch, who is signed in, sign out.

import { setText } from './dom.js';
import { t } from './i18n.js';
import { notificationPermission, notificationsSupported, requestNotifications, unlockAudio } from './notify.js';

export class TopBar {
  constructor(app) {
    this.app = app;
    this.conn = document.getElementById('conn');
    this.avail = document.getElementById('avail');
    this.notify = document.getElementById('notify');
    this.me = document.getElementById('me');
    this.avail.onclick = () => {
      unlockAudio();
      app.setAvailability(app.availability === 'online' ? 'away' : 'online');
    };
    this.notify.onclick = async () => {
      unlockAudio();
      await requestNotifications();
      this.render();
    };
    document.getElementById('logout').onclick = () => app.signOut();
    // Any click may unlock audio for later beeps.
    document.addEventListener('pointerdown', unlockAudio, { once: true });
  }

  render() {
    const app = this.app;
    const online = app.availability === 'online';
    this.avail.setAttribute('aria-pressed', String(online));
    this.avail.dataset.availability = app.availability;
    setText(this.avail, online ? t('agent.online') : t('agent.away'));
    this.avail.setAttribute('aria-label', `${t('agent.availability')}: ${online ? t('agent.online') : t('agent.away')}`);
    setText(this.me, app.me?.name || '');
    const s = app.client.state;
    if (s === 'online') this.everOnline = true;
    const text =
      s === 'online' ? '' : s === 'offline' || (s === 'connecting' && this.everOnline) ? t('chat.offline') : s === 'connecting' ? t('chat.connecting') : s === 'stopped' ? t('chat.stopped') : '';
    setText(this.conn, text);
    this.conn.dataset.state = s;
    this.conn.hidden = !text;
    const perm = notificationPermission();
    this.notify.hidden = !notificationsSupported();
    this.notify.disabled = perm !== 'default';
    setText(this.notify, perm === 'granted' ? t('agent.notify_on') : perm === 'denied' ? t('agent.notify_denied') : t('agent.notify_enable'));
  }
}
