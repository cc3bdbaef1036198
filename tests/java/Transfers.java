// pgjdbc through pgmix: transactions of prepared statements (autocommit off), as applications
// and ORMs on the JVM send them. pgjdbc sends BEGIN by the extended protocol, pipelined with the
// transaction's first statement before one Sync, and switches to named server-side statements
// after `prepareThreshold` executions.
//
// Usage: java -cp postgresql.jar Transfers.java JDBC_URL USER PASSWORD ROUNDS
// Prints "jdbc: ok <committed>" and exits 0 when every transaction committed and the total held.
import java.sql.*;

public class Transfers {
    public static void main(String[] args) throws Exception {
        String url = args[0];
        int rounds = Integer.parseInt(args[3]);
        try (Connection c = DriverManager.getConnection(url, args[1], args[2])) {
            long before = total(c);
            c.setAutoCommit(false);
            int committed = 0;
            try (PreparedStatement debit = c.prepareStatement("UPDATE accounts SET balance = balance - ? WHERE id = ?");
                 PreparedStatement credit = c.prepareStatement("UPDATE accounts SET balance = balance + ? WHERE id = ?");
                 PreparedStatement read = c.prepareStatement("SELECT balance FROM accounts WHERE id = ?")) {
                for (int i = 0; i < rounds; i++) {
                    int from = 1 + i % 10, to = 1 + (i + 3) % 10;
                    debit.setLong(1, 1); debit.setInt(2, from);
                    if (debit.executeUpdate() != 1) throw new AssertionError("debit touched no row");
                    credit.setLong(1, 1); credit.setInt(2, to);
                    if (credit.executeUpdate() != 1) throw new AssertionError("credit touched no row");
                    read.setInt(1, from);
                    try (ResultSet rs = read.executeQuery()) {
                        if (!rs.next()) throw new AssertionError("no row read back");
                    }
                    c.commit();
                    committed++;
                }
                // A rolled-back transaction leaves nothing.
                debit.setLong(1, 1000); debit.setInt(2, 1);
                debit.executeUpdate();
                c.rollback();
            }
            // A transaction that reads first, then writes, then fails and is rolled back.
            try (Statement s = c.createStatement()) {
                s.executeQuery("SELECT count(*) FROM accounts").close();
                s.executeUpdate("UPDATE accounts SET balance = balance WHERE id = 1");
                try {
                    s.executeQuery("SELECT 1/0").close();
                    throw new AssertionError("1/0 succeeded");
                } catch (SQLException e) {
                    if (!"22012".equals(e.getSQLState())) throw e;
                }
                c.rollback();
            }
            c.setAutoCommit(true);
            long after = total(c);
            if (after != before) throw new AssertionError("total " + before + " became " + after);
            System.out.println("jdbc: ok " + committed);
        }
    }

    static long total(Connection c) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT sum(balance) FROM accounts")) {
            rs.next();
            return rs.getLong(1);
        }
    }
}
