//! Drawing the dashboard: one `render_*` per panel, from the `App`'s state.

use ccd_protocol::types::{ActorState, BreakerState, HealthStatus};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, BorderType, Paragraph, Row, Table, Wrap};

use super::state::{App, EventsLink, Link, Panel};
use super::text::{breaker_key, compact, event_line, format_ms, short, spec};

impl App {
    pub(super) fn render(&mut self, f: &mut Frame) {
        let area = f.area();
        let actors = self
            .view()
            .and_then(|v| v.health.as_ref().ok())
            .map_or(0, |h| h.actors.len());
        let top = (actors as u16 + 3).clamp(10, 15);
        let middle_rows = self.view().map_or(1, |v| {
            let breakers = v.breakers.as_ref().map_or(1, |b| b.breakers.len() + 1);
            let limits = v.limiter.as_ref().map_or(1, |l| l.keys.len().max(1) + 1);
            breakers.max(limits)
        });
        let middle_height = (middle_rows as u16 + 2).clamp(4, 9);
        // On short terminals the tables give way (they scroll) so that a third of the height,
        // and at least 5 lines, stays for the events.
        let body = area.height.saturating_sub(2);
        let events_min = (body / 3).max(5);
        let top = top.min(body.saturating_sub(middle_height + events_min).max(6));
        let [header, top_area, middle, events_area, footer] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(top),
            Constraint::Length(middle_height),
            Constraint::Min(events_min),
            Constraint::Length(1),
        ])
        .areas(area);
        let [actors_area, right] =
            Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)])
                .areas(top_area);
        let [queries_area, today_area] =
            Layout::vertical([Constraint::Min(4), Constraint::Length(6)]).areas(right);
        let [breakers_area, limits_area] =
            Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
                .areas(middle);

        self.render_header(f, header);
        self.render_actors(f, actors_area);
        self.render_queries(f, queries_area);
        self.render_today(f, today_area);
        self.render_breakers(f, breakers_area);
        self.render_limits(f, limits_area);
        self.render_events(f, events_area);
        self.render_footer(f, footer);
    }

    pub(super) fn block(&self, panel: Panel, title: String) -> Block<'static> {
        let focused = self.focus == panel;
        let block = Block::bordered().title(Span::styled(
            format!(" {title} "),
            Style::new().add_modifier(Modifier::BOLD),
        ));
        if focused {
            block
                .border_type(BorderType::Thick)
                .border_style(Style::new().fg(Color::Cyan))
        } else {
            block.border_style(Style::new().fg(Color::DarkGray))
        }
    }

    pub(super) fn render_header(&self, f: &mut Frame, area: Rect) {
        let bold = Style::new().add_modifier(Modifier::BOLD);
        let line = match &self.link {
            Link::Connecting => Line::from(vec![
                Span::styled(" ccd ", bold),
                Span::raw(" connecting to the daemon…"),
            ]),
            Link::Down { why, since } => {
                let mut spans = vec![
                    Span::styled(" ccd ", bold),
                    Span::styled(
                        format!(" {why} "),
                        Style::new()
                            .fg(Color::White)
                            .bg(Color::Red)
                            .add_modifier(Modifier::BOLD),
                    ),
                ];
                spans.push(Span::raw(format!(
                    "  down for {}",
                    format_ms(since.elapsed().as_millis() as u64)
                )));
                Line::from(spans)
            }
            Link::Up(view) => match &view.health {
                Ok(h) => {
                    let status = if h.status == HealthStatus::Ok {
                        Span::styled("ok", Style::new().fg(Color::Green))
                    } else {
                        Span::styled(h.status.as_str(), Style::new().fg(Color::Yellow))
                    };
                    Line::from(vec![
                        Span::styled(" ccd ", bold),
                        Span::styled("● running", Style::new().fg(Color::Green)),
                        Span::raw(format!(
                            "  pid {}  v{}  up {}  status ",
                            h.pid,
                            h.version,
                            format_ms(h.uptime_ms)
                        )),
                        status,
                        Span::styled(format!("  {}", self.home), Style::new().fg(Color::DarkGray)),
                    ])
                }
                Err(e) => Line::from(vec![
                    Span::styled(" ccd ", bold),
                    Span::styled(
                        format!(" the daemon answered with an error: {e} "),
                        Style::new().fg(Color::Black).bg(Color::Yellow),
                    ),
                ]),
            },
        };
        f.render_widget(Paragraph::new(line), area);
    }

    /// A message in place of a panel's content.
    pub(super) fn message(
        &self,
        f: &mut Frame,
        area: Rect,
        block: Block<'static>,
        text: &str,
        style: Style,
    ) {
        f.render_widget(
            Paragraph::new(Line::styled(text.to_string(), style))
                .wrap(Wrap { trim: true })
                .block(block),
            area,
        );
    }

    /// What the actors panel shows when there is no daemon data: why, in full.
    pub(super) fn no_daemon(&self) -> (String, Style) {
        match &self.link {
            Link::Down { why, .. } => (
                why.clone(),
                Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
            ),
            _ => ("connecting…".into(), Style::new().fg(Color::DarkGray)),
        }
    }

    /// What the other panels show then (the header and the actors panel say why).
    pub(super) fn no_data(&self) -> &'static str {
        match &self.link {
            Link::Down { .. } => "no data: the daemon is not reachable",
            _ => "connecting…",
        }
    }

    pub(super) fn render_actors(&mut self, f: &mut Frame, area: Rect) {
        let block = self.block(Panel::Actors, "Actors".into());
        let health = match self.view().map(|v| &v.health) {
            Some(Ok(h)) => h,
            Some(Err(e)) => {
                let e = e.clone();
                return self.message(f, area, block, &e, Style::new().fg(Color::Yellow));
            }
            None => {
                let (text, style) = self.no_daemon();
                return self.message(f, area, block, &text, style);
            }
        };
        let rows: Vec<Row> = health
            .actors
            .iter()
            .map(|a| {
                let state = match a.state {
                    ActorState::Running => Style::new().fg(Color::Green),
                    ActorState::Restarting => Style::new().fg(Color::Yellow),
                    ActorState::Failed => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
                };
                let restarts = if a.restarts > 0 {
                    Style::new().fg(Color::Yellow)
                } else {
                    Style::new()
                };
                Row::new(vec![
                    Span::raw(a.name.clone()),
                    Span::styled(a.state.as_str(), state),
                    Span::styled(a.restarts.to_string(), restarts),
                    Span::raw(format_ms(a.uptime_ms)),
                    Span::styled(
                        a.reason
                            .clone()
                            .or_else(|| a.last_panic.clone())
                            .unwrap_or_else(|| "-".into()),
                        Style::new().fg(Color::DarkGray),
                    ),
                ])
            })
            .collect();
        let header = ["ACTOR", "STATE", "RESTARTS", "UP", "LAST PANIC"];
        let widths = [
            Constraint::Length(11),
            Constraint::Length(10),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Fill(1),
        ];
        self.table(f, area, block, Panel::Actors, &header, rows, &widths);
    }

    /// A table whose rows scroll when its panel is focused.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn table(
        &mut self,
        f: &mut Frame,
        area: Rect,
        block: Block<'static>,
        panel: Panel,
        header: &[&'static str],
        rows: Vec<Row<'static>>,
        widths: &[Constraint],
    ) {
        let visible = area.height.saturating_sub(3) as usize;
        let scroll = &mut self.scroll[panel.index()];
        *scroll = (*scroll).min(rows.len().saturating_sub(visible));
        let block = scroll_hint(block, *scroll, rows.len(), visible);
        let rows: Vec<Row> = rows.into_iter().skip(*scroll).collect();
        let header = Row::new(header.to_vec()).style(
            Style::new()
                .fg(Color::Gray)
                .add_modifier(Modifier::BOLD | Modifier::UNDERLINED),
        );
        f.render_widget(
            Table::new(rows, widths.to_vec())
                .header(header)
                .block(block),
            area,
        );
    }

    /// Plain lines that scroll when the panel is focused.
    pub(super) fn lines(
        &mut self,
        f: &mut Frame,
        area: Rect,
        block: Block<'static>,
        panel: Panel,
        lines: Vec<Line<'static>>,
    ) {
        let visible = area.height.saturating_sub(2) as usize;
        let scroll = &mut self.scroll[panel.index()];
        *scroll = (*scroll).min(lines.len().saturating_sub(visible));
        let block = scroll_hint(block, *scroll, lines.len(), visible);
        let lines: Vec<Line> = lines.into_iter().skip(*scroll).collect();
        f.render_widget(Paragraph::new(lines).block(block), area);
    }

    pub(super) fn render_queries(&mut self, f: &mut Frame, area: Rect) {
        let block = self.block(Panel::Queries, "Queries in flight".into());
        let dim = Style::new().fg(Color::DarkGray);
        let mut lines = Vec::new();
        match self.view().map(|v| &v.health) {
            Some(Ok(h)) => {
                let e = &h.executor;
                let bar_width = e.size.min(20);
                let filled = if e.size == 0 {
                    0
                } else {
                    (e.busy * bar_width).div_ceil(e.size).min(bar_width)
                };
                let busy_style = if e.busy >= e.size && e.size > 0 {
                    Style::new().fg(Color::Yellow)
                } else {
                    Style::new().fg(Color::Green)
                };
                let agent = match h.agent.available {
                    Some(true) => Span::styled(
                        format!(
                            "{} {}",
                            h.agent.command,
                            h.agent.version.as_deref().unwrap_or("")
                        ),
                        Style::new().fg(Color::Green),
                    ),
                    Some(false) => Span::styled(
                        format!(
                            "{} unavailable{}",
                            h.agent.command,
                            h.agent
                                .reason
                                .as_deref()
                                .map(|r| format!(": {r}"))
                                .unwrap_or_default()
                        ),
                        Style::new().fg(Color::Red),
                    ),
                    None => Span::raw(format!("{} (checking…)", h.agent.command)),
                };
                lines.push(Line::from(vec![Span::raw("agent    "), agent]));
                lines.push(Line::from(vec![
                    Span::raw("executor "),
                    Span::styled("█".repeat(filled), busy_style),
                    Span::styled("░".repeat(bar_width - filled), dim),
                    Span::raw(format!(" {}/{} busy, ", e.busy, e.size)),
                    Span::styled(
                        format!("{} queued", e.queued),
                        if e.queued > 0 {
                            Style::new().fg(Color::Yellow)
                        } else {
                            Style::new()
                        },
                    ),
                ]));
            }
            Some(Err(_)) => lines.push(Line::styled("executor: unknown", dim)),
            None => lines.push(Line::styled(self.no_data(), dim)),
        }
        if self.in_flight.is_empty() {
            lines.push(Line::styled("no turns running", dim));
        } else {
            lines.push(Line::styled(
                format!(
                    "{} running{}:",
                    crate::table::count(self.in_flight.len(), "turn"),
                    if self.lagged {
                        " (events were lost; may be stale)"
                    } else {
                        ""
                    }
                ),
                Style::new().add_modifier(Modifier::BOLD),
            ));
            let mut running: Vec<_> = self.in_flight.iter().collect();
            running.sort_by_key(|(_, q)| q.seen);
            for (query_id, q) in running {
                let age = q.seen.elapsed().as_secs() * 1000;
                lines.push(Line::from(vec![
                    Span::styled(short(query_id).to_string(), Style::new().fg(Color::Cyan)),
                    Span::raw(format!(" {:>6}  ", format_ms(age))),
                    Span::raw(q.model.as_deref().unwrap_or("default model").to_string()),
                    Span::raw(
                        q.project
                            .as_deref()
                            .map(|p| format!(" in {p}"))
                            .unwrap_or_default(),
                    ),
                    Span::styled(format!("  session {}", short(&q.session_id)), dim),
                ]));
            }
        }
        self.lines(f, area, block, Panel::Queries, lines);
    }

    pub(super) fn render_today(&mut self, f: &mut Frame, area: Rect) {
        let block = self.block(Panel::Today, "Today (since 00:00 UTC)".into());
        let lines = match &self.today {
            None => vec![Line::styled("reading…", Style::new().fg(Color::DarkGray))],
            Some(Err(e)) => vec![Line::styled(e.clone(), Style::new().fg(Color::Red))],
            Some(Ok(t)) => {
                let errors = t.errors_retryable + t.errors_non_retryable + t.errors_unavailable;
                vec![
                    Line::from(vec![
                        Span::styled(
                            format!("${:.4}", t.cost_usd),
                            Style::new().fg(Color::Green).add_modifier(Modifier::BOLD),
                        ),
                        Span::raw(format!("  {} tokens", compact(t.usage.total()))),
                    ]),
                    Line::raw(format!(
                        "tokens in {} · out {} · cache write {} · read {}",
                        compact(t.usage.input_tokens),
                        compact(t.usage.output_tokens),
                        compact(t.usage.cache_creation_input_tokens),
                        compact(t.usage.cache_read_input_tokens)
                    )),
                    Line::from(vec![
                        Span::raw(format!("queries {} · ok {} · ", t.queries, t.ok)),
                        Span::styled(
                            {
                                let classes: Vec<String> = [
                                    (t.errors_retryable, "retryable"),
                                    (t.errors_non_retryable, "non_retryable"),
                                    (t.errors_unavailable, "unavailable"),
                                ]
                                .iter()
                                .filter(|(n, _)| *n > 0)
                                .map(|(n, class)| format!("{n} {class}"))
                                .collect();
                                if classes.is_empty() {
                                    format!("errors {errors}")
                                } else {
                                    format!("errors {errors} ({})", classes.join(", "))
                                }
                            },
                            if errors > 0 {
                                Style::new().fg(Color::Red)
                            } else {
                                Style::new()
                            },
                        ),
                    ]),
                    Line::raw(format!(
                        "timeouts {} · cancelled {} · refused {}",
                        t.timeouts, t.cancelled, t.refused
                    )),
                ]
            }
        };
        self.lines(f, area, block, Panel::Today, lines);
    }

    pub(super) fn render_breakers(&mut self, f: &mut Frame, area: Rect) {
        let block = self.block(Panel::Breakers, "Circuit breakers".into());
        let list = match self.view().map(|v| &v.breakers) {
            Some(Ok(b)) => b,
            Some(Err(e)) => {
                let e = e.clone();
                return self.message(f, area, block, &e, Style::new().fg(Color::Yellow));
            }
            None => {
                let text = self.no_data();
                return self.message(f, area, block, text, Style::new().fg(Color::DarkGray));
            }
        };
        if list.breakers.is_empty() {
            return self.message(
                f,
                area,
                block,
                "no breakers yet (one per agent command and model)",
                Style::new().fg(Color::DarkGray),
            );
        }
        let rows = list
            .breakers
            .iter()
            .map(|b| {
                let (state, style) = match b.state {
                    BreakerState::Closed => ("CLOSED", Style::new().fg(Color::Green)),
                    BreakerState::Open => (
                        "OPEN",
                        Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
                    ),
                    BreakerState::HalfOpen => ("HALF_OPEN", Style::new().fg(Color::Yellow)),
                };
                Row::new(vec![
                    Span::raw(breaker_key(&b.key)),
                    Span::styled(state, style),
                    Span::raw(format!(
                        "{:.0}% of {}",
                        b.failure_rate * 100.0,
                        b.calls_in_window
                    )),
                    Span::raw(if b.retry_after_ms > 0 {
                        format!("{:.1}s", b.retry_after_ms as f64 / 1000.0)
                    } else {
                        "-".into()
                    }),
                    Span::raw(format!("{}/{}", b.rejected, b.times_opened)),
                ])
            })
            .collect();
        let widths = [
            Constraint::Fill(1),
            Constraint::Length(9),
            Constraint::Length(11),
            Constraint::Length(8),
            Constraint::Length(9),
        ];
        let header = ["KEY", "STATE", "FAILURES", "RETRY IN", "REJ/OPEN"];
        self.table(f, area, block, Panel::Breakers, &header, rows, &widths);
    }

    pub(super) fn render_limits(&mut self, f: &mut Frame, area: Rect) {
        let block = self.block(Panel::Limits, "Rate limits".into());
        let status = match self.view().map(|v| &v.limiter) {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                let e = e.clone();
                return self.message(f, area, block, &e, Style::new().fg(Color::Yellow));
            }
            None => {
                let text = self.no_data();
                return self.message(f, area, block, text, Style::new().fg(Color::DarkGray));
            }
        };
        let mut lines = vec![Line::from(vec![
            Span::styled("global ", Style::new().add_modifier(Modifier::BOLD)),
            Span::raw(spec(&status.limits.global)),
            Span::styled(" · model ", Style::new().add_modifier(Modifier::BOLD)),
            Span::raw(spec(&status.limits.model)),
            Span::styled(" · project ", Style::new().add_modifier(Modifier::BOLD)),
            Span::raw(spec(&status.limits.project)),
        ])];
        if status.keys.is_empty() {
            lines.push(Line::styled(
                "no queries limited yet",
                Style::new().fg(Color::DarkGray),
            ));
        }
        for k in &status.keys {
            let busy = if k.waiting > 0 {
                Style::new().fg(Color::Yellow)
            } else {
                Style::new()
            };
            lines.push(Line::from(vec![
                Span::styled(format!("{:<20} ", k.key), Style::new().fg(Color::Cyan)),
                Span::styled(
                    format!("in flight {} · waiting {}", k.in_flight, k.waiting),
                    busy,
                ),
                Span::raw(format!(
                    " · throttled {} · admitted {}",
                    k.throttled, k.admitted
                )),
                Span::styled(
                    k.available_tokens
                        .map(|t| format!(" · tokens {t}"))
                        .unwrap_or_default(),
                    Style::new().fg(Color::DarkGray),
                ),
            ]));
        }
        self.lines(f, area, block, Panel::Limits, lines);
    }

    pub(super) fn render_events(&mut self, f: &mut Frame, area: Rect) {
        let visible = area.height.saturating_sub(2) as usize;
        let total = self.events.len();
        let idx = Panel::Events.index();
        self.scroll[idx] = self.scroll[idx].min(total.saturating_sub(visible));
        let back = self.scroll[idx];
        let state = match &self.events_link {
            EventsLink::Connecting => "connecting…".to_string(),
            EventsLink::Live if back > 0 => {
                format!("scrolled back {back}; End to follow")
            }
            EventsLink::Live => "live".to_string(),
            EventsLink::Lost(_) => "disconnected; retrying…".to_string(),
        };
        let block = self.block(
            Panel::Events,
            format!("Events ({total}, times UTC) — {state}"),
        );
        if total == 0 {
            let text = match &self.events_link {
                EventsLink::Lost(why) => why.clone(),
                _ => "no events yet".into(),
            };
            return self.message(f, area, block, &text, Style::new().fg(Color::DarkGray));
        }
        let end = total - back;
        let start = end.saturating_sub(visible);
        let block = scroll_hint(block, start, total, visible);
        let lines: Vec<Line> = self
            .events
            .values()
            .skip(start)
            .take(end - start)
            .map(event_line)
            .collect();
        f.render_widget(Paragraph::new(lines).block(block), area);
    }

    pub(super) fn render_footer(&self, f: &mut Frame, area: Rect) {
        let key = Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD);
        let dim = Style::new().fg(Color::DarkGray);
        let mut spans = vec![
            Span::styled(" q", key),
            Span::raw(" quit  "),
            Span::styled("Tab", key),
            Span::raw(" focus  "),
            Span::styled("↑↓ PgUp PgDn", key),
            Span::raw(" scroll  "),
            Span::styled("Home/End", key),
            Span::raw(" oldest/newest   "),
        ];
        if let Some(t) = self.updated {
            spans.push(Span::styled(
                format!("updated {:.1}s ago", t.elapsed().as_secs_f64()),
                dim,
            ));
        }
        f.render_widget(Paragraph::new(Line::from(spans)), area);
    }
}

/// Say on a panel's bottom border how many of its lines are out of view, when some are.
pub(super) fn scroll_hint(
    block: Block<'static>,
    first: usize,
    total: usize,
    visible: usize,
) -> Block<'static> {
    let below = total.saturating_sub(first + visible);
    if first == 0 && below == 0 {
        return block;
    }
    let mut parts = Vec::new();
    if first > 0 {
        parts.push(format!("↑{first}"));
    }
    if below > 0 {
        parts.push(format!("↓{below}"));
    }
    block.title_bottom(Line::from(format!(" {} more ", parts.join(" "))).right_aligned())
}
