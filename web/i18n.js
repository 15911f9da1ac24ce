// Every UI string of the widget and the console, in English and Simplified Chinese.
// The language is picked from navigator.languages (or an explicit override such as the
// widget's data-lang attribute). Strings are plain text: they are only ever put into
// the page with textContent, never parsed as HTML.

const STRINGS = {
  en: {
    // widget
    'widget.bubble': 'Chat with us',
    'widget.bubble_close': 'Close chat window',
    'widget.title': 'Customer support',
    'widget.subtitle': 'We usually reply in a few minutes',
    'widget.intro': 'Hi! Ask us anything. Tell us your name if you like.',
    'widget.name_label': 'Your name (optional)',
    'widget.name_placeholder': 'e.g. Ann',
    'widget.name_reserved': 'This name is reserved. Please choose another one.',
    'widget.name_invalid': 'This name cannot be used. Please choose another one.',
    'widget.start': 'Start chat',
    'widget.queued': 'You are number {n} in line',
    'widget.queued_next': 'You are next in line',
    'widget.queued_wait': 'Waiting for an agent…',
    'widget.with_agent': 'You are chatting with {name}',
    'widget.closed': 'This chat has ended',
    'widget.end': 'End chat',
    'widget.end_confirm': 'End this chat?',
    'widget.end_yes': 'Yes, end it',
    'widget.end_no': 'Keep chatting',
    'widget.rate_title': 'How did we do?',
    'widget.rate_star': '{n} out of 5 stars',
    'widget.rate_comment': 'Comment (optional)',
    'widget.rate_submit': 'Send rating',
    'widget.rate_thanks': 'Thank you for your feedback!',
    'widget.new_chat': 'Start a new chat',
    'widget.powered': 'Powered by Parley',
    // shared chat
    'chat.input_label': 'Message',
    'chat.input_placeholder': 'Type a message…',
    'chat.send': 'Send',
    'chat.pending': 'Sending…',
    'chat.sent': 'Sent',
    'chat.seen': 'Seen',
    'chat.failed': 'Not sent: {reason}',
    'chat.typing': '{name} is typing…',
    'chat.someone': 'Someone',
    'chat.you': 'You',
    'chat.too_long': 'Too long: {n} / {max} characters',
    'chat.counter': '{n} / {max}',
    'chat.rate_limited': 'You are sending messages quickly, so we are slowing down. Your message will be sent in a moment.',
    'chat.offline': 'Connection lost. Reconnecting…',
    'chat.connecting': 'Connecting…',
    'chat.stopped': 'Disconnected.',
    'chat.reconnect': 'Reconnect',
    'chat.error': 'Something went wrong: {reason}',
    'chat.empty': 'No messages yet.',
    // events
    'event.assigned': '{name} joined the chat',
    'event.transferred_agent': 'Chat transferred to {name}',
    'event.transferred_room': 'Chat transferred to the {room} team',
    'event.transferred': 'Chat transferred',
    'event.closed': 'Chat ended',
    'event.closed_by': 'Chat ended by {name}',
    'event.closed_by_customer': 'Chat ended by the customer',
    'event.closed_by_you': 'You ended the chat',
    'event.rated': 'Rated {score} out of 5',
    'event.rated_plain': 'Chat rated',
    'event.reopened': 'Chat reopened',
    // console
    'agent.title': 'agent console',
    'agent.login_title': 'Sign in',
    'agent.login_name': 'Name',
    'agent.login_password': 'Password',
    'agent.login_submit': 'Sign in',
    'agent.login_failed': 'Wrong name or password.',
    'agent.login_error': 'Could not sign in: {reason}',
    'agent.session_expired': 'Your session has expired. Please sign in again.',
    'agent.signed_out_password': 'Your password was changed, so you were signed out. Please sign in with the new password.',
    'agent.signed_out_removed': 'Your agent account was removed, so you were signed out. Ask an administrator if you still need access.',
    'agent.signed_out_other': 'You were signed out ({reason}). Please sign in again.',
    'agent.logout': 'Sign out',
    'agent.online': 'Online',
    'agent.away': 'Away',
    'agent.offline': 'Offline',
    'agent.availability': 'Availability',
    'agent.notify_enable': 'Enable notifications',
    'agent.notify_on': 'Notifications on',
    'agent.notify_denied': 'Notifications blocked',
    'agent.rooms': 'Rooms',
    'agent.room_name': 'Room name',
    'agent.join': 'Join',
    'agent.leave': 'Leave',
    'agent.queue': 'Queue',
    'agent.queue_empty': 'Nobody is waiting.',
    'agent.agents': 'Agents',
    'agent.load': '{active}/{max}',
    'agent.waiting': 'waiting {time}',
    'agent.accept': 'Accept',
    'agent.view': 'View',
    'agent.conversations': 'My conversations',
    'agent.no_conversations': 'No active conversations.',
    'agent.unread': '{n} unread',
    'agent.pick': 'Pick a conversation on the left, or wait for a customer.',
    'agent.internal': 'Internal note',
    'agent.note_label': 'Internal note — not visible to the customer',
    'agent.note_placeholder': 'Write an internal note…',
    'agent.transfer_to': 'Transfer to',
    'agent.transfer': 'Transfer',
    'agent.transfer_agent': 'Agent: {name}',
    'agent.transfer_room': 'Room: {room}',
    'agent.close': 'Close chat',
    'agent.back': 'Back',
    'agent.status.queued': 'Queued',
    'agent.status.active': 'Active',
    'agent.status.closed': 'Closed',
    'agent.assigned_to': 'Assigned to {name}',
    'agent.unassigned': 'Unassigned',
    'agent.seen_by_customer': 'Seen by customer',
    'agent.new_assignment': 'New conversation from {name}',
    'agent.new_message': 'New message from {name}',
    'agent.customer': 'Customer',
    'agent.customer_tag': 'customer',
    'agent.loading': 'Loading…',
    'agent.not_found': 'No such room.',
    // errors by code
    'err.bad_request': 'bad request',
    'err.unauthorized': 'not signed in',
    'err.forbidden': 'not allowed',
    'err.not_found': 'not found',
    'err.conflict': 'already taken or not possible now',
    'err.rate_limited': 'too many messages',
    'err.too_large': 'too large',
    'err.unavailable': 'service unavailable, try again',
    'err.internal': 'server error',
    'err.disconnected': 'disconnected',
    'err.timeout': 'no answer from server',
    // time
    'time.s': '{n}s',
    'time.m': '{n}m {s}s',
    'time.h': '{n}h {m}m',
  },
  zh: {
    'widget.bubble': '联系客服',
    'widget.bubble_close': '关闭聊天窗口',
    'widget.title': '在线客服',
    'widget.subtitle': '我们通常几分钟内回复',
    'widget.intro': '您好！有什么可以帮您？愿意的话请留下您的称呼。',
    'widget.name_label': '您的称呼（可选）',
    'widget.name_placeholder': '例如：小安',
    'widget.name_reserved': '这个称呼已被系统保留，请换一个。',
    'widget.name_invalid': '这个称呼无法使用，请换一个。',
    'widget.start': '开始聊天',
    'widget.queued': '您排在第 {n} 位',
    'widget.queued_next': '下一位就是您',
    'widget.queued_wait': '正在等待客服…',
    'widget.with_agent': '{name} 正在为您服务',
    'widget.closed': '本次对话已结束',
    'widget.end': '结束对话',
    'widget.end_confirm': '确定结束本次对话？',
    'widget.end_yes': '结束',
    'widget.end_no': '继续聊天',
    'widget.rate_title': '请为本次服务评分',
    'widget.rate_star': '{n} 星（满分 5 星）',
    'widget.rate_comment': '留言（可选）',
    'widget.rate_submit': '提交评分',
    'widget.rate_thanks': '感谢您的反馈！',
    'widget.new_chat': '发起新对话',
    'widget.powered': '由 Parley 提供支持',
    'chat.input_label': '消息',
    'chat.input_placeholder': '输入消息…',
    'chat.send': '发送',
    'chat.pending': '发送中…',
    'chat.sent': '已发送',
    'chat.seen': '已读',
    'chat.failed': '未发送：{reason}',
    'chat.typing': '{name} 正在输入…',
    'chat.someone': '对方',
    'chat.you': '我',
    'chat.too_long': '太长了：{n} / {max} 字',
    'chat.counter': '{n} / {max}',
    'chat.rate_limited': '您发送得太快了，我们正在放慢速度，消息稍后会自动发送。',
    'chat.offline': '连接已断开，正在重新连接…',
    'chat.connecting': '正在连接…',
    'chat.stopped': '已断开连接。',
    'chat.reconnect': '重新连接',
    'chat.error': '出错了：{reason}',
    'chat.empty': '还没有消息。',
    'event.assigned': '{name} 已加入对话',
    'event.transferred_agent': '对话已转接给 {name}',
    'event.transferred_room': '对话已转接到 {room} 组',
    'event.transferred': '对话已转接',
    'event.closed': '对话已结束',
    'event.closed_by': '{name} 结束了对话',
    'event.closed_by_customer': '客户结束了对话',
    'event.closed_by_you': '您结束了对话',
    'event.rated': '评分：{score} / 5',
    'event.rated_plain': '已评分',
    'event.reopened': '对话已重新打开',
    'agent.title': '客服工作台',
    'agent.login_title': '登录',
    'agent.login_name': '用户名',
    'agent.login_password': '密码',
    'agent.login_submit': '登录',
    'agent.login_failed': '用户名或密码错误。',
    'agent.login_error': '无法登录：{reason}',
    'agent.session_expired': '登录已过期，请重新登录。',
    'agent.signed_out_password': '您的密码已更改，已自动退出登录。请使用新密码重新登录。',
    'agent.signed_out_removed': '您的客服账号已被删除，已自动退出登录。如仍需使用，请联系管理员。',
    'agent.signed_out_other': '您已被退出登录（{reason}）。请重新登录。',
    'agent.logout': '退出登录',
    'agent.online': '在线',
    'agent.away': '离开',
    'agent.offline': '离线',
    'agent.availability': '状态',
    'agent.notify_enable': '开启通知',
    'agent.notify_on': '通知已开启',
    'agent.notify_denied': '通知被阻止',
    'agent.rooms': '房间',
    'agent.room_name': '房间名',
    'agent.join': '加入',
    'agent.leave': '离开',
    'agent.queue': '排队',
    'agent.queue_empty': '没有人在排队。',
    'agent.agents': '客服',
    'agent.load': '{active}/{max}',
    'agent.waiting': '已等待 {time}',
    'agent.accept': '接入',
    'agent.view': '查看',
    'agent.conversations': '我的对话',
    'agent.no_conversations': '暂无进行中的对话。',
    'agent.unread': '{n} 条未读',
    'agent.pick': '请在左侧选择一个对话，或等待新客户。',
    'agent.internal': '内部备注',
    'agent.note_label': '内部备注——客户看不到',
    'agent.note_placeholder': '写一条内部备注…',
    'agent.transfer_to': '转接给',
    'agent.transfer': '转接',
    'agent.transfer_agent': '客服：{name}',
    'agent.transfer_room': '房间：{room}',
    'agent.close': '结束对话',
    'agent.back': '返回',
    'agent.status.queued': '排队中',
    'agent.status.active': '进行中',
    'agent.status.closed': '已结束',
    'agent.assigned_to': '由 {name} 负责',
    'agent.unassigned': '未分配',
    'agent.seen_by_customer': '客户已读',
    'agent.new_assignment': '来自 {name} 的新对话',
    'agent.new_message': '来自 {name} 的新消息',
    'agent.customer': '客户',
    'agent.customer_tag': '客户',
    'agent.loading': '加载中…',
    'agent.not_found': '没有这个房间。',
    'err.bad_request': '请求无效',
    'err.unauthorized': '未登录',
    'err.forbidden': '无权操作',
    'err.not_found': '未找到',
    'err.conflict': '已被接入或当前无法操作',
    'err.rate_limited': '消息过多',
    'err.too_large': '内容过长',
    'err.unavailable': '服务暂不可用，请稍后再试',
    'err.internal': '服务器错误',
    'err.disconnected': '连接已断开',
    'err.timeout': '服务器无响应',
    'time.s': '{n} 秒',
    'time.m': '{n} 分 {s} 秒',
    'time.h': '{n} 小时 {m} 分',
  },
};

function pick(candidates) {
  for (const c of candidates) {
    if (!c) continue;
    const l = String(c).toLowerCase();
    if (l.startsWith('zh')) return 'zh';
    if (l.startsWith('en')) return 'en';
  }
  return 'en';
}

let current = pick(typeof navigator === 'undefined' ? [] : (navigator.languages || [navigator.language]));

/** Force a language ("en", "zh", "zh-CN", ...); unknown values keep the detected one. */
export function setLang(code) {
  if (code) current = pick([code, current]);
}

/** "en" or "zh". */
export function lang() {
  return current;
}

/** BCP 47 tag for Intl formatting and the html lang attribute. */
export function locale() {
  return current === 'zh' ? 'zh-CN' : 'en';
}

/** The string for key with {param} placeholders filled in. Missing keys fall back to English. */
export function t(key, params = {}) {
  const s = STRINGS[current][key] ?? STRINGS.en[key] ?? key;
  return s.replace(/\{(\w+)\}/g, (m, k) => (k in params ? String(params[k]) : m));
}

/** The reason text for an error code (see PROTOCOL.md §3). */
export function errorText(code) {
  const key = `err.${code}`;
  return STRINGS.en[key] ? t(key) : String(code || 'error');
}

/** Short "3m 20s" style duration. */
export function duration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return t('time.s', { n: s });
  if (s < 3600) return t('time.m', { n: Math.floor(s / 60), s: s % 60 });
  return t('time.h', { n: Math.floor(s / 3600), m: Math.floor((s % 3600) / 60) });
}

/**
 * Fill static markup: [data-i18n] gets its text, [data-i18n-placeholder] its
 * placeholder, [data-i18n-label] its aria-label, [data-i18n-title] its title.
 */
export function localize(root) {
  for (const el of root.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll('[data-i18n-placeholder]')) el.setAttribute('placeholder', t(el.dataset.i18nPlaceholder));
  for (const el of root.querySelectorAll('[data-i18n-label]')) el.setAttribute('aria-label', t(el.dataset.i18nLabel));
  for (const el of root.querySelectorAll('[data-i18n-title]')) el.setAttribute('title', t(el.dataset.i18nTitle));
  if (root.documentElement) root.documentElement.lang = locale();
}
