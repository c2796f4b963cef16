//! Plain-text tables for people: a header row, a rule, and left-aligned columns.

/// Renders `rows` under `header` with `|` separators, each column as wide as its widest cell.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::from("|");
        for (cell, w) in cells.zip(&widths) {
            s.push_str(&format!(" {cell:<w$} |"));
        }
        s.push('\n');
        s
    };
    let mut out = line(&mut header.iter().copied());
    out.push('|');
    for w in &widths {
        out.push_str(&"-".repeat(w + 2));
        out.push('|');
    }
    out.push('\n');
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let t = render(
            &["A", "LONG"],
            &[
                vec!["wide cell".into(), "x".into()],
                vec![String::new(), "y".into()],
            ],
        );
        assert_eq!(
            t,
            "| A         | LONG |\n|-----------|------|\n| wide cell | x    |\n|           | y    |\n"
        );
    }
}
