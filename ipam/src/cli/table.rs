//! Left-aligned columns, as wide as their widest cell.

pub struct Table<const N: usize> {
    head: [String; N],
    rows: Vec<[String; N]>,
}

impl<const N: usize> Table<N> {
    pub fn new(head: [&str; N]) -> Self {
        Table {
            head: head.map(str::to_string),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: [String; N]) {
        self.rows.push(cells);
    }

    pub fn print(&self) {
        let mut w = self.head.clone().map(|h| h.len());
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let line = |cells: &[String; N]| {
            let s: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<width$}", width = w[i]))
                .collect();
            println!("{}", s.join("  ").trim_end());
        };
        line(&self.head);
        for r in &self.rows {
            line(r);
        }
    }
}
