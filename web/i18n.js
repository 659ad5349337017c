// i18n.js — every string the wall shows, in one table. Simplified Chinese is the default;
// English is the switch. Add a language by adding a column; a missing key falls back to zh.

export const LANGS = ['zh', 'en'];

const T = {
  title: { zh: '一网 · 指挥视频墙', en: 'yiwang · command video wall' },
  signin_title: { zh: '登录视频墙', en: 'Sign in to the video wall' },
  signin_hint: { zh: '粘贴管理员发放的访问令牌。令牌只保存在本标签页。', en: 'Paste the access token from your administrator. It is kept in this tab only.' },
  signin_token: { zh: '访问令牌', en: 'Access token' },
  signin_submit: { zh: '登录', en: 'Sign in' },
  signin_connecting: { zh: '正在连接节点…', en: 'Connecting to the node…' },
  signout: { zh: '退出', en: 'Sign out' },
  err_expired: { zh: '令牌已过期，请向管理员索取新令牌。', en: 'This token has expired. Ask your administrator for a new one.' },
  err_revoked: { zh: '令牌已被吊销，无法登录。', en: 'This token has been revoked.' },
  err_refused: { zh: '节点拒绝了此令牌：', en: 'The node refused this token: ' },
  err_network: { zh: '无法连接节点，正在重试…', en: 'Cannot reach the node; retrying…' },
  err_no_token: { zh: '请输入访问令牌。', en: 'Please enter an access token.' },
  err_session: { zh: '会话已结束，请重新登录。', en: 'The session ended; please sign in again.' },
  lang_switch: { zh: 'English', en: '中文' },
  role: { zh: '角色', en: 'Role' },
  connected: { zh: '已连接', en: 'Connected' },
  reconnecting: { zh: '重新连接中…', en: 'Reconnecting…' },
  layout: { zh: '布局', en: 'Layout' },
  layout_keys: { zh: '快捷键 1–5 切换布局，F 最大化，Esc 返回', en: 'Keys 1–5 switch layout, F maximises, Esc returns' },
  streams: { zh: '视频源', en: 'Streams' },
  no_streams: { zh: '暂无直播', en: 'No live streams' },
  node_streams: { zh: '节点 {node}（{n}）', en: 'Node {node} ({n})' },
  trunks_ok: { zh: '干线 {n} 条正常', en: '{n} trunks up' },
  trunks_down: { zh: '干线中断：{nodes}', en: 'Trunk down: {nodes}' },
  trunk_line: { zh: '{peer}（{role}）往返 {rtt} 毫秒', en: '{peer} ({role}) RTT {rtt} ms' },
  tile_empty: { zh: '空闲 — 拖入或选择视频源', en: 'Empty — drag or pick a stream' },
  tile_pick: { zh: '选择视频源', en: 'Pick a stream' },
  tile_none: { zh: '（无）', en: '(none)' },
  tile_pin: { zh: '固定', en: 'Pin' },
  tile_unpin: { zh: '取消固定', en: 'Unpin' },
  tile_max: { zh: '最大化', en: 'Maximise' },
  tile_restore: { zh: '还原', en: 'Restore' },
  tile_stalled: { zh: '画面停滞', en: 'Stalled' },
  tile_connecting: { zh: '连接中…', en: 'Connecting…' },
  tile_offline: { zh: '信号中断，重连中…', en: 'No signal; reconnecting…' },
  kind_camera: { zh: '单兵', en: 'Camera' },
  kind_drone: { zh: '无人机', en: 'Drone' },
  kind_fixed: { zh: '固定点位', en: 'Fixed camera' },
  map: { zh: '态势地图', en: 'Map' },
  map_no_lib: { zh: '地图库未安装（运行 scripts/build-web.sh）', en: 'Map library missing (run scripts/build-web.sh)' },
  map_grid: { zh: '无底图：经纬网格', en: 'No base map: coordinate grid' },
  officer: { zh: '人员', en: 'Officer' },
  drone: { zh: '无人机', en: 'Drone' },
  stale: { zh: '位置过时', en: 'stale' },
  incident: { zh: '事件', en: 'Incident' },
  tab_chat: { zh: '消息', en: 'Chat' },
  tab_orders: { zh: '指令', en: 'Orders' },
  tab_log: { zh: '日志', en: 'Log' },
  chat_placeholder: { zh: '输入消息…', en: 'Type a message…' },
  send: { zh: '发送', en: 'Send' },
  order_to: { zh: '接收人', en: 'To' },
  order_text: { zh: '指令内容', en: 'Order' },
  order_send: { zh: '下达指令', en: 'Send order' },
  order_sent: { zh: '已发送', en: 'sent' },
  order_delivered: { zh: '已送达', en: 'delivered' },
  order_accepted: { zh: '已接受', en: 'accepted' },
  order_declined: { zh: '已拒绝', en: 'declined' },
  order_done: { zh: '已完成', en: 'done' },
  eta: { zh: '预计到达', en: 'ETA' },
  minutes: { zh: '分钟', en: 'min' },
  reason: { zh: '原因', en: 'Reason' },
  sos_banner: { zh: '紧急求救', en: 'SOS' },
  sos_ack: { zh: '确认收到', en: 'Acknowledge' },
  sos_from: { zh: '来自', en: 'from' },
  drone_alt: { zh: '相对高度', en: 'Rel. alt' },
  drone_speed: { zh: '地速', en: 'Ground speed' },
  drone_heading: { zh: '航向', en: 'Heading' },
  drone_battery: { zh: '电量', en: 'Battery' },
  drone_mode: { zh: '模式', en: 'Mode' },
  drone_armed: { zh: '已解锁', en: 'Armed' },
  drone_disarmed: { zh: '未解锁', en: 'Disarmed' },
  drone_link_up: { zh: '链路正常', en: 'Link up' },
  drone_link_lost: { zh: '链路中断', en: 'Link lost' },
  cmd_rtl: { zh: '返航', en: 'RTL' },
  cmd_hold: { zh: '悬停', en: 'Hold' },
  cmd_land: { zh: '降落', en: 'Land' },
  cmd_guided: { zh: '飞往', en: 'Go to' },
  cmd_confirm: { zh: '确认向 {drone} 发送「{cmd}」指令？', en: 'Send "{cmd}" to {drone}?' },
  cmd_ok: { zh: '确认', en: 'Confirm' },
  cmd_cancel: { zh: '取消', en: 'Cancel' },
  cmd_sent: { zh: '已发送，等待应答', en: 'sent, awaiting ACK' },
  cmd_refused: { zh: '被拒绝', en: 'refused' },
  lat: { zh: '纬度', en: 'Lat' },
  lon: { zh: '经度', en: 'Lon' },
  alt: { zh: '高度(米)', en: 'Alt (m)' },
  no_right: { zh: '当前角色无权操作', en: 'Your role may not do this' },
  error: { zh: '错误', en: 'Error' },
};

let lang = 'zh';

/** The language in use: `?lang=`, then localStorage, then Simplified Chinese. */
export function initLang() {
  const q = new URLSearchParams(location.search).get('lang');
  const stored = (() => { try { return localStorage.getItem('yiwang.lang'); } catch (_) { return null; } })();
  lang = LANGS.includes(q) ? q : LANGS.includes(stored) ? stored : 'zh';
  document.documentElement.lang = lang === 'zh' ? 'zh-CN' : 'en';
  return lang;
}

export function getLang() {
  return lang;
}

export function setLang(l) {
  if (!LANGS.includes(l)) return;
  lang = l;
  try { localStorage.setItem('yiwang.lang', l); } catch (_) { /* private mode */ }
  document.documentElement.lang = l === 'zh' ? 'zh-CN' : 'en';
  translate(document);
}

/** The string for `key`, with `{name}` placeholders filled from `vars`. */
export function t(key, vars) {
  const e = T[key];
  let s = e ? e[lang] ?? e.zh : key;
  if (vars) for (const [k, v] of Object.entries(vars)) s = s.replaceAll(`{${k}}`, String(v));
  return s;
}

/** Fills every `[data-i18n]` element's text (and `[data-i18n-ph]` placeholders) under `root`. */
export function translate(root) {
  for (const el of root.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll('[data-i18n-ph]')) el.placeholder = t(el.dataset.i18nPh);
  for (const el of root.querySelectorAll('[data-i18n-title]')) el.title = t(el.dataset.i18nTitle);
  document.title = t('title');
}
